"""Watch the actions directory and report bursts of relevant changes.

watchdog's inotify observer is the source (no polling); this module is the
handler: it keeps only events that can change what is served, and
watchdog's ``EventDebouncer`` turns a burst of them (an editor's
write-temp-and-rename, a ``cp -r`` of 500 files) into one callback.

Two things watchdog does not hand to its handlers are reported here too:
a lost event (the kernel's inotify queue overflowed, so some change was
never announced) and a dead observer (a watchdog thread that ended with an
exception: from then on nothing is announced at all).
"""

import logging
import os
import threading
from collections.abc import Callable
from collections.abc import Iterable

from watchdog import events
from watchdog.observers import inotify
from watchdog.utils import event_debouncer

from hotload import trust

#: Names in the state directory whose removal the daemon must repair.
STATE_ENTRIES = frozenset({'manifest.json', 'lock', 'control'})

#: Events that change what a scan finds. Plain "modified" is left out on
#: purpose: it fires for every write while a file is being written;
#: "closed" (IN_CLOSE_WRITE) marks the end. "attrib" covers chmod/chown,
#: which can make a file untrusted.
RELEVANT_EVENTS = frozenset({
    events.EVENT_TYPE_CREATED, events.EVENT_TYPE_DELETED,
    events.EVENT_TYPE_MOVED, events.EVENT_TYPE_CLOSED,
    events.EVENT_TYPE_ATTRIB,
})


def is_relevant(event: events.FileSystemEvent, root: str) -> bool:
    """True when ``event`` may change the modules found under ``root``."""
    if event.event_type not in RELEVANT_EVENTS:
        return False
    paths = [event.src_path, getattr(event, 'dest_path', '')]
    return any(_is_relevant_path(os.fsdecode(p), root, event.is_directory)
               for p in paths if p)


def changed_paths(changes: Iterable[events.FileSystemEvent],
                  root: str) -> set[str]:
    """The paths under ``root`` that ``changes`` name, relative to it.

    Both ends of a move count: what left a path changed it as much as what
    arrived. ``root`` itself is ``'.'``. Paths outside ``root`` (the state
    directory's control files) are left out.

    :param changes: A burst of events, as ``on_changes`` receives it.
    :param root: The actions directory (its real path).
    """
    paths = set()
    for event in changes:
        for path in (event.src_path, getattr(event, 'dest_path', '')):
            if not path:
                continue
            relpath = os.path.relpath(os.fsdecode(path), root)
            if relpath != '..' and not relpath.startswith('..' + os.sep):
                paths.add(relpath)
    return paths


def _is_relevant_path(path: str, root: str, is_directory: bool) -> bool:
    relpath = os.path.relpath(path, root)
    if relpath == '.':
        return True
    if relpath.startswith('..'):
        return False
    parts = relpath.split(os.sep)
    if any(trust.is_ignored_dir(part) for part in parts[:-1]):
        return False
    if is_directory:
        return not trust.is_ignored_dir(parts[-1])
    return not trust.is_ignored_name(parts[-1])


class _Handler(events.FileSystemEventHandler):
    def __init__(self, root: str,
                 debouncer: event_debouncer.EventDebouncer) -> None:
        self.root = root
        self.debouncer = debouncer

    def dispatch(self, event: events.FileSystemEvent) -> None:
        if is_relevant(event, self.root):
            self.debouncer.handle_event(event)


class _ControlHandler(events.FileSystemEventHandler):
    def __init__(self, debouncer: event_debouncer.EventDebouncer) -> None:
        self.debouncer = debouncer

    def dispatch(self, event: events.FileSystemEvent) -> None:
        if event.event_type in RELEVANT_EVENTS:
            self.debouncer.handle_event(event)


class _StateHandler(events.FileSystemEventHandler):
    """Removals in the state directory: its own writes are not changes."""

    def __init__(self, state_dir: str,
                 debouncer: event_debouncer.EventDebouncer) -> None:
        self.state_dir = state_dir
        self.debouncer = debouncer

    def dispatch(self, event: events.FileSystemEvent) -> None:
        if event.event_type not in (events.EVENT_TYPE_DELETED,
                                    events.EVENT_TYPE_MOVED):
            return
        path = os.fsdecode(event.src_path)
        if path == self.state_dir or (
                os.path.dirname(path) == self.state_dir
                and os.path.basename(path) in STATE_ENTRIES):
            self.debouncer.handle_event(event)


class _OverflowSpotter(logging.Handler):
    """Hears watchdog say that the kernel dropped events.

    watchdog (7.1 and later) re-creates its watches after an inotify queue
    overflow but tells no handler, and only logs it; without this the
    changes whose events were lost would wait for the next safety rescan.
    """

    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(logging.WARNING)
        self.on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if 'overflow' in str(record.msg).lower():
            self.on_overflow()


class TreeWatcher:
    """Calls ``on_changes`` once per burst of relevant changes.

    :param root: The actions directory, watched recursively.
    :param on_changes: Called from the debouncer's thread with the events
        of one burst; it should return quickly (hand the work over).
    :param debounce_interval: Seconds to wait for more events after one
        arrives, at most, before calling ``on_changes``.
    :param control_dir: A directory of requests (the state directory's
        ``control/``) whose every change also counts.
    :param state_dir: The state directory, whose removal (or the removal
        of its ``manifest.json``, lock or ``control/``) also counts.
    :param on_overflow: Called, from a watchdog thread, when file system
        events were lost; it should return quickly.
    """

    def __init__(self, root: str,
                 on_changes: Callable[[list[events.FileSystemEvent]], None],
                 debounce_interval: float,
                 control_dir: str | None = None,
                 state_dir: str | None = None,
                 on_overflow: Callable[[], None] | None = None) -> None:
        self.root = os.path.realpath(root)
        self._debouncer = event_debouncer.EventDebouncer(
            debounce_interval, on_changes)
        self._observer = inotify.InotifyObserver()
        self._observer.schedule(_Handler(self.root, self._debouncer),
                                self.root, recursive=True)
        if control_dir:
            self._observer.schedule(_ControlHandler(self._debouncer),
                                    control_dir, recursive=False)
        if state_dir:
            state_dir = os.path.realpath(state_dir)
            self._observer.schedule(_StateHandler(state_dir, self._debouncer),
                                    state_dir, recursive=False)
        self._spotter = _OverflowSpotter(on_overflow) if on_overflow \
            else None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._spotter:
            watchdog_log = logging.getLogger('watchdog')
            watchdog_log.addHandler(self._spotter)
            if not watchdog_log.isEnabledFor(logging.WARNING):
                watchdog_log.setLevel(logging.WARNING)
        self._debouncer.start()
        self._observer.start()
        # The threads that must live for changes of the tree to be heard:
        # the observer, the debouncer, the tree's emitter and the inotify
        # reader (which watchdog 7 shares process-wide, so it may come
        # from an earlier watcher). The state directory's emitters end,
        # normally, when that directory is removed; the daemon checks the
        # state directory itself.
        threads = {self._observer, self._debouncer}
        threads.update(e for e in self._observer.emitters
                       if os.path.realpath(e.watch.path) == self.root)
        shared = getattr(getattr(inotify, 'InotifyFD', None), '_instance',
                         None)
        if isinstance(shared, threading.Thread):
            threads.add(shared)
        self._threads = sorted(threads, key=lambda t: t.name)

    def problem(self) -> str | None:
        """Why the watcher no longer announces changes, or None.

        A watchdog thread that died (an exception, say, from a tree too
        deep to walk) leaves the daemon deaf while everything else looks
        normal.
        """
        for thread in self._threads:
            if not thread.is_alive():
                return f'the file watcher thread {thread.name} has died'
        return None

    def stop(self) -> None:
        if self._spotter:
            logging.getLogger('watchdog').removeHandler(self._spotter)
        self._observer.stop()
        self._observer.join()
        self._debouncer.stop()
        self._debouncer.join()
