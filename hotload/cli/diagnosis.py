"""What a ``mistral-hotload doctor`` check returns, and what the checks
share (:mod:`hotload.cli.doctor` and the modules of its checks)."""

import pwd
import shlex
import typing

OK = 'ok'
WARNING = 'warning'
FAIL = 'FAIL'
#: The daemon's systemd unit, in fixes.
SERVICE = 'mistral-hotload'


class Row(typing.NamedTuple):
    """One line of the report."""

    check: str
    result: str
    detail: str


def user_name(uid: int) -> str:
    """The name of user ``uid``, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def quote(path: str) -> str:
    """``path`` as a shell word, for the fixes shown."""
    return shlex.quote(path)
