"""Which files may be loaded: names, owners, modes, sizes, symlinks.

Loading a file runs its code inside Mistral, so a file is only accepted
when nobody but a trusted owner could have written it: the file, every
directory from the actions directory down to it, and the directories above
the actions directory (unless sticky, like /tmp) must be owned by a trusted
user and not writable by group or others. A symlink's target is held to
the same rules (the directories checked are those down to the target).
"""

import os
import pwd
import re
import stat

_EDITOR_TEMP = re.compile(
    r'''^(?:
        \..*            # hidden, and emacs .#lock, vim .x.py.swp
      | .*~             # backup files
      | \#.*\#          # emacs auto-save
      | 4913            # vim's write test file
      | .*\.(?:swp|swx|tmp|orig|rej)
    )$''', re.VERBOSE)

_IDENTIFIER = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')

SKIPPED_DIRS = frozenset({'__pycache__'})


def is_ignored_name(name: str) -> bool:
    """True for names that are never modules: hidden, editor temp, non-.py.

    Ignored files are not reported: an editor's swap file next to a module
    is normal, not an error.
    """
    return bool(_EDITOR_TEMP.match(name)) or not name.endswith('.py')


def is_ignored_dir(name: str) -> bool:
    return name.startswith('.') or name in SKIPPED_DIRS


def is_identifier(name: str) -> bool:
    """True when ``name`` can be a Python module or package name."""
    return bool(_IDENTIFIER.match(name)) and name.isascii()


def _resolve_owner(owner: str) -> int | None:
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        return None


class TrustPolicy:
    """The trust rules of one configuration.

    :param trusted_owners: User names or numeric uids allowed to own the
        actions directory and its files; the effective user of this process
        is always added. Unknown names are listed in ``unknown_owners``.
    :param max_file_size: Largest module accepted, in bytes.
    :param check_ownership: When False, owners and modes are not checked
        (for ``mistral-hotload check`` in an author's checkout); names,
        sizes and symlinks still are.
    """

    def __init__(self, trusted_owners: list[str], max_file_size: int,
                 check_ownership: bool = True) -> None:
        self.max_file_size = max_file_size
        self.check_ownership = check_ownership
        self.unknown_owners = [o for o in trusted_owners
                               if _resolve_owner(o) is None]
        self.trusted_uids = {uid for uid in map(_resolve_owner, trusted_owners)
                             if uid is not None} | {os.geteuid()}

    def check_owner_and_mode(self, st: os.stat_result, what: str,
                             sticky_ok: bool = False) -> str | None:
        """Problem with who could have written ``st``, or None.

        :param st: The stat of a file or directory.
        :param what: How to name it in the message.
        :param sticky_ok: Accept a sticky directory writable by all (/tmp):
            nobody but its owner may rename or remove others' entries.
        """
        if not self.check_ownership:
            return None
        if st.st_uid not in self.trusted_uids:
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            return (f'{what} is owned by {owner}, which is not a trusted '
                    f'owner (trusted_owners); chown it to a trusted user')
        if sticky_ok and st.st_mode & stat.S_ISVTX:
            return None
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            writable = ('everyone' if st.st_mode & stat.S_IWOTH
                        else 'its group')
            return (f'{what} is writable by {writable} '
                    f'(mode {stat.S_IMODE(st.st_mode):04o}); '
                    f'run chmod go-w on it')
        return None

    def check_ancestors(self, root: str) -> str | None:
        """Problem with the directories above ``root``, or None."""
        if not self.check_ownership:
            return None
        path = os.path.dirname(os.path.realpath(root))
        while True:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None  # created later, under a checked parent
            if st is not None:
                problem = self.check_owner_and_mode(
                    st, f'parent directory {path}', sticky_ok=True)
                if problem:
                    return problem
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent

    def check_dir(self, path: str, st: os.stat_result) -> str | None:
        """Problem with a directory of the tree, or None."""
        return self.check_owner_and_mode(st, f'directory {path}')

    def check_file(self, st: os.stat_result) -> str | None:
        """Problem with an opened file (``fstat`` of its descriptor)."""
        if not stat.S_ISREG(st.st_mode):
            return 'not a regular file'
        if st.st_size > self.max_file_size:
            return (f'file is {st.st_size} bytes, larger than max_file_size '
                    f'({self.max_file_size} bytes)')
        return self.check_owner_and_mode(st, 'file')
