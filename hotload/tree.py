"""The walk's knowledge of the tree, kept between scans.

A full walk reads and hashes every file: in a tree of a thousand modules
that is most of what one changed file costs. The watcher already says
which paths changed, so between full walks only those paths are judged
again, each as the full walk would judge it, and the snapshot is composed
from the kept entries (:func:`hotload.walk.compose`).

Whole walks remain where the events cannot be trusted to name every
change: the first scan, an operator's reload, a restored state directory,
lost events, and the periodic safety net; the daemon decides, this module
only does what it is asked.
"""

import os
import threading
from collections.abc import Callable
from collections.abc import Iterable

from hotload import store
from hotload import trust
from hotload import walk


def _policy_key(policy: trust.TrustPolicy, max_depth: int) -> tuple:
    """What of a configuration the kept entries were judged under."""
    return (frozenset(policy.trusted_uids), policy.max_file_size,
            policy.check_ownership, max_depth)


class TreeState:
    """The entries of the last walk of one actions directory.

    Not thread-safe: one scan at a time uses it (the daemon's scan lock).

    :param root: The actions directory.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self._entries: dict[str, walk.Entry] | None = None
        self._key: tuple | None = None
        self._snapshot: walk.TreeSnapshot | None = None
        #: Symlinked file to its target inside the tree.
        self._links: dict[str, str] = {}

    @property
    def walked(self) -> bool:
        """True when the entries of a complete walk are kept."""
        return self._entries is not None

    def invalidate(self) -> None:
        """Forget the entries: the next :meth:`snapshot` walks it all."""
        self._entries = None
        self._snapshot = None
        self._links = {}

    def snapshot(self, policy: trust.TrustPolicy, blobs: store.BlobStore,
                 changed: Iterable[str] | None = None, *,
                 max_depth: int = 32,
                 on_progress: Callable[[], None] | None = None,
                 cancelled: threading.Event | None = None
                 ) -> walk.TreeSnapshot:
        """The tree now, judging again only the ``changed`` paths.

        :param policy: The trust rules.
        :param blobs: Where accepted contents are stored.
        :param changed: Paths relative to the actions directory that
            changed since the last call (both ends of a move); None walks
            the whole tree, as does a first call or a change of the rules.
        :param max_depth: Deepest directory level walked.
        :param on_progress: Called after each directory listed and each
            file hashed.
        :param cancelled: When set, the walk stops.
        :raises UntrustedRootError: when the directory itself is refused.
        :raises ScanCancelled: when ``cancelled`` is set.
        """
        key = _policy_key(policy, max_depth)
        walker = walk.TreeWalk(walk.check_root(self.root, policy), policy,
                               blobs, max_depth, on_progress, cancelled)
        paths = None if changed is None else self._normalized(changed)
        if paths is None or self._entries is None or key != self._key:
            self.invalidate()
            walker.walk_dir('', 0, None)
            self._keep(walker.entries, key)
            return self._snapshot
        if not paths:
            return self._snapshot
        entries = self._entries
        # Until the update is complete, the kept entries are half old and
        # half new: a failure (cancelled, disk full) must walk it all next.
        self._entries = None
        targets = self._targets(walker, paths)
        tops = tuple(t + os.sep for t, _d, _i in targets)
        gone = {t for t, _d, _i in targets}
        walker.entries = {path: entry for path, entry in entries.items()
                          if path not in gone and not path.startswith(tops)}
        for relpath, depth, inherited in targets:
            walker.evaluate(relpath, depth, inherited)
        self._keep(walker.entries, key)
        return self._snapshot

    def _keep(self, entries: dict[str, walk.Entry], key: tuple) -> None:
        self._snapshot = walk.compose(entries)
        self._links = {path: entry.link_target
                       for path, entry in entries.items()
                       if entry.link_target}
        self._entries = entries
        self._key = key

    @staticmethod
    def _normalized(changed: Iterable[str]) -> set[str] | None:
        """The changed paths, or None when the root itself changed."""
        paths = set()
        for path in changed:
            path = os.path.normpath(path)
            if path == '.':
                # The root's own mode or owner decides every file.
                return None
            if path == '..' or path.startswith('..' + os.sep) or \
                    os.path.isabs(path):
                continue
            paths.add(path)
        return paths

    def _targets(self, walker: walk.TreeWalk, paths: set[str]
                 ) -> list[tuple[str, int, str | None]]:
        """The paths to judge again, none below another, in path order."""
        # A symlink's content is its target's: the events name the target.
        prefixes = tuple(p + os.sep for p in paths)
        paths |= {link for link, target in self._links.items()
                  if target in paths or target.startswith(prefixes)}
        climbed = {}
        for path in paths:
            found = walker.climb(path)
            if found is not None:
                climbed[found[0]] = found
        targets = []
        for path in sorted(climbed):
            parts = path.split(os.sep)
            if not any(os.sep.join(parts[:level]) in climbed
                       for level in range(1, len(parts))):
                targets.append(climbed[path])
        return targets
