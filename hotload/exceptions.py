"""Errors raised by mistral-hotload, in one place."""

from mistral_lib import exceptions as ml_exceptions


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


class SdkError(HotloadError, ml_exceptions.ActionException):
    """:mod:`hotload.sdk` could not do what an action asked.

    Also a :class:`mistral_lib.exceptions.ActionException`, the exception
    an action raises to fail: an action that lets it propagate fails with
    its message, and one that catches ``ActionException`` catches it.

    :param message: What went wrong, as the action's error shows it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # mistral-lib's exceptions carry their text in ``message`` too.
        self.message = message

    def __str__(self) -> str:
        return self.message


class CredentialsError(SdkError):
    """The action's security context gives no usable OpenStack session:
    no token (Mistral runs without authentication), neither a service
    catalog nor a Keystone URL, or Keystone refused or could not
    validate the token. The message never contains the token."""


class RunActionError(SdkError):
    """:func:`hotload.sdk.run_action` could not run an action, or the
    action failed.

    :param message: What went wrong.
    :param action_name: The name of the action asked for.
    """

    def __init__(self, message: str, action_name: str) -> None:
        super().__init__(message)
        self.action_name = action_name


class ActionNotFoundError(RunActionError):
    """No action provider of the process serves the name asked for."""


class AsyncActionError(RunActionError):
    """The action asked for is asynchronous: its result would reach
    Mistral later, through its API, never the action that called it."""


class InnerActionError(RunActionError):
    """The action :func:`hotload.sdk.run_action` ran failed.

    :param message: The action's name and its error.
    :param action_name: The action's name.
    :param error: Its error as it gave it: the ``error`` of the
        :class:`mistral_lib.actions.Result` it returned (any JSON value),
        or the text of the exception it raised.
    """

    def __init__(self, message: str, action_name: str,
                 error: object) -> None:
        super().__init__(message, action_name)
        self.error = error
