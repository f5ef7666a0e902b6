"""Signatures of manifests that cross nodes (HMAC-SHA256, cluster_key)."""

import hashlib
import hmac

import pytest

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
