"""Signatures of manifests that cross nodes (HMAC-SHA256, cluster_key)."""

import hashlib
import hmac

import pytest

from hotload import cluster
from hotload import exceptions
from hotload import manifest
from hotload import signing

KEY = 'correct horse battery staple'


def document() -> bytes:
    return manifest.Manifest.build({}, 'hotload_actions', 'hot', 7).to_json()


def test_signature_is_hmac_sha256_of_the_exact_bytes():
    data = document()
    signature = signing.sign(data, KEY)
    assert signature == hmac.new(KEY.encode(), data,
                                 hashlib.sha256).hexdigest()
    signing.verify(data, signature, KEY)
    # Upper-case hex digits are the same signature.
    signing.verify(data, signature.upper(), KEY)


@pytest.mark.parametrize('change', [
    lambda data: data.replace(b'"generation": 7', b'"generation": 8'),
    lambda data: data + b'\n',
    lambda data: data.replace(b': ', b':'),
])
def test_any_change_of_the_bytes_is_refused(change):
    data = document()
    signature = signing.sign(data, KEY)
    with pytest.raises(exceptions.SignatureError, match='wrong signature'):
        signing.verify(change(data), signature, KEY)


def test_another_key_is_refused_and_never_named():
    data = document()
    signature = signing.sign(data, 'another key')
    with pytest.raises(exceptions.SignatureError) as caught:
        signing.verify(data, signature, KEY, source='generation 7 from a')
    message = str(caught.value)
    assert 'generation 7 from a has a wrong signature' in message
    assert KEY not in message and 'another key' not in message


@pytest.mark.parametrize('signature, reason', [
    (None, 'is not signed'),
    ('', 'is not signed'),
    (12, 'malformed signature'),
    ('ab' * 31, 'malformed signature'),
    ('é' * 64, 'malformed signature'),
    (['ab' * 32], 'malformed signature'),
])
def test_missing_or_malformed_signatures_are_refused(signature, reason):
    with pytest.raises(exceptions.SignatureError, match=reason):
        signing.verify(document(), signature, KEY)


@pytest.mark.parametrize('key', [None, ''])
def test_no_key_signs_and_checks_nothing(key):
    data = document()
    with pytest.raises(exceptions.SignatureError, match='no .* cluster_key'):
        signing.sign(data, key)
    with pytest.raises(exceptions.SignatureError, match='no .* cluster_key'):
        signing.verify(data, signing.sign(data, KEY), key)


def test_cluster_key_is_secret_in_the_configuration():
    from hotload import conf as hotload_conf

    option = {opt.name: opt for opt in hotload_conf.hotload_opts}
    assert option['cluster_key'].secret


# Statuses of the daemons of a cluster (hotload.cluster).

def status() -> dict:
    return {'host': 'node-b', 'role': 'mirror', 'pid': 42,
            'generation': 7, 'digest': 'ab' * 32, 'error': None,
            'published_at': '2026-01-01T00:00:00+00:00', 'highest': 7}


def test_a_status_is_signed_with_the_request_it_answers():
    signed = cluster.sign_status(status(), KEY, 'request-1')
    assert set(signed) == set(status()) | {'signature'}
    assert signed['signature'] == hmac.new(
        KEY.encode(), cluster.canonical(status(), 'request-1'),
        hashlib.sha256).hexdigest()
    assert cluster.unverified_reason(signed, KEY, 'request-1') is None
    # Key order does not matter: the broker may reorder a mapping.
    reordered = dict(reversed(list(signed.items())))
    assert cluster.unverified_reason(reordered, KEY, 'request-1') is None


def test_canonical_form_is_sorted_compact_json_with_the_request():
    assert cluster.canonical({'b': 1, 'a': None, 'signature': 'x'},
                             'r') == b'{"a":null,"b":1,"request_id":"r"}'


@pytest.mark.parametrize('change, reason', [
    (lambda s: dict(s, generation=8), 'has a wrong signature'),
    (lambda s: dict(s, error='forged'), 'has a wrong signature'),
    (lambda s: {k: v for k, v in s.items() if k != 'signature'},
     'is not signed'),
    (lambda s: dict(s, signature='zz'), 'malformed signature'),
    (lambda s: dict(s, extra=object()), 'cannot be encoded'),
])
def test_a_changed_status_does_not_verify(change, reason):
    signed = cluster.sign_status(status(), KEY, 'request-1')
    found = cluster.unverified_reason(change(signed), KEY, 'request-1')
    assert reason in found
    assert found.startswith('the status of node-b ')
    assert KEY not in found


def test_a_replayed_status_or_another_key_does_not_verify():
    signed = cluster.sign_status(status(), KEY, 'request-1')
    assert 'wrong signature' in cluster.unverified_reason(
        signed, KEY, 'request-2')
    assert 'wrong signature' in cluster.unverified_reason(
        signed, 'another key', 'request-1')
    assert 'no [hotload] cluster_key' in cluster.unverified_reason(
        signed, None, 'request-1')
    assert cluster.unverified_reason(['not', 'a', 'dict'], KEY,
                                     'request-1') == 'not a status'
