"""Errors raised by mistral-hotload, in one place."""


class HotloadError(Exception):
    """Base class of every error raised by mistral-hotload."""


class ManifestError(HotloadError):
    """A manifest on disk is missing, unreadable or of an unknown schema."""


class BlobError(HotloadError):
    """A blob is missing from the store or does not match its hash."""


class StateLockedError(HotloadError):
    """Another process holds the state directory's writer lock."""


class UntrustedRootError(HotloadError):
    """The actions directory itself fails the trust rules.

    Nothing under it can be loaded, so a scan stops instead of reporting
    every file.
    """


class UntrustedManifestError(HotloadError):
    """A manifest someone untrusted could have written; never served."""


class ScanCancelled(HotloadError):
    """A scan was stopped part-way (the daemon is stopping or reloading).

    Nothing of it is published: the generation being served stays.
    """


class ControlFileError(ManifestError):
    """A file of ``state_dir/control/`` that the CLI writes is malformed."""


class InvalidReferenceError(HotloadError):
    """A serialized hot action names its version in a form never produced.

    The executor refuses it before touching the blob store: the action
    fails cleanly instead of reading whatever path the reference spells.
    """


class SignatureError(HotloadError):
    """A manifest from another node is unsigned or wrongly signed.

    A mirror refuses it and keeps serving what it has. The message never
    contains the key.
    """


class ClusterError(HotloadError):
    """A mirror could not take the publisher's generation.

    The publisher is unreachable, or it answered with something refused
    (a blob whose content does not match its sha256, a malformed reply);
    the mirror keeps serving what it has.
    """


class FetchError(BlobError):
    """An executor could not fetch a version its node lacks from the
    publisher (unreachable, unsigned, not served, or a blob not matching
    its hash); the action fails with this reason."""
