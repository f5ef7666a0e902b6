"""Signatures of the manifests that cross nodes.

oslo.messaging authenticates nothing: anyone on the broker can announce a
generation or answer on the publisher's topic. The publisher therefore
signs each manifest it serves with HMAC-SHA256 under ``[hotload]
cluster_key``, a secret every node shares; a mirror takes a manifest only
when the signature matches, and then only blobs whose sha256 that manifest
names. Only the manifest needs a signature: it names every blob by hash.

The signature covers the manifest's exact bytes (``Manifest.to_json()``
is deterministic), so there is no second serialisation to get wrong. The
key never appears in a log or an error message.
"""

import hashlib
import hmac

from hotload import exceptions

#: Length of a signature: hex digits of a SHA-256 digest.
SIGNATURE_LENGTH = 64


def _key_bytes(key: str | None) -> bytes:
    if not key:
        # An empty key would sign with a value every attacker knows.
        raise exceptions.SignatureError(
            'no [hotload] cluster_key is configured; manifests from other '
            'nodes cannot be signed or checked')
    return key.encode('utf-8')


def sign(data: bytes, key: str | None) -> str:
    """The signature of ``data`` under ``key``, as hex digits.

    :param data: The manifest's JSON bytes, exactly as served.
    :param key: ``[hotload] cluster_key``.
    :raises SignatureError: when ``key`` is empty.
    """
    return hmac.new(_key_bytes(key), data, hashlib.sha256).hexdigest()


def verify(data: bytes, signature: object, key: str | None,
           source: str = 'the manifest') -> None:
    """Check that ``signature`` is ``data``'s under ``key``.

    The comparison takes the same time wherever the signatures differ
    (``hmac.compare_digest``), so answers on the broker cannot be used to
    guess a signature byte by byte.

    :param data: The manifest's JSON bytes as received.
    :param signature: The signature received with them; anything (it came
        over the broker), checked here.
    :param key: ``[hotload] cluster_key``.
    :param source: What ``data`` is, for the error message.
    :raises SignatureError: when the signature is missing, malformed or
        wrong, or ``key`` is empty.
    """
    expected = sign(data, key)
    if not signature:
        raise exceptions.SignatureError(f'{source} is not signed')
    # compare_digest accepts ASCII strings only.
    if not isinstance(signature, str) or not signature.isascii() or \
            len(signature) != SIGNATURE_LENGTH:
        raise exceptions.SignatureError(
            f'{source} has a malformed signature (not {SIGNATURE_LENGTH} '
            f'hex digits)')
    if not hmac.compare_digest(expected, signature.lower()):
        raise exceptions.SignatureError(
            f'{source} has a wrong signature: it was not signed with this '
            f'node\'s cluster_key (a different key on the publisher, or a '
            f'forgery)')
