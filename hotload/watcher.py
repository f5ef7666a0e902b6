"""Watch the actions directory and report bursts of relevant changes.

watchdog's inotify observer is the source (no polling); this module is the
handler: it keeps only events that can change what is served, and
watchdog's ``EventDebouncer`` turns a burst of them (an editor's
write-temp-and-rename, a ``cp -r`` of 500 files) into one callback.
"""

import os
from collections.abc import Callable

from watchdog import events
from watchdog.observers import inotify
from watchdog.utils import event_debouncer

from hotload import trust

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


def _is_relevant_path(path: str, root: str, is_directory: bool) -> bool:
    relpath = os.path.relpath(path, root)
    if relpath == '.' :
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


class TreeWatcher:
    """Calls ``on_changes`` once per burst of relevant changes.

    :param root: The actions directory, watched recursively.
    :param on_changes: Called from the debouncer's thread with the events
        of one burst; it should return quickly (hand the work over).
    :param debounce_interval: Seconds to wait for more events after one
        arrives, at most, before calling ``on_changes``.
    :param control_dir: A directory of requests (the state directory's
        ``control/``) whose every change also counts.
    """

    def __init__(self, root: str,
                 on_changes: Callable[[list[events.FileSystemEvent]], None],
                 debounce_interval: float,
                 control_dir: str | None = None) -> None:
        self.root = os.path.realpath(root)
        self._debouncer = event_debouncer.EventDebouncer(
            debounce_interval, on_changes)
        self._observer = inotify.InotifyObserver()
        self._observer.schedule(_Handler(self.root, self._debouncer),
                                self.root, recursive=True)
        if control_dir:
            self._observer.schedule(_ControlHandler(self._debouncer),
                                    control_dir, recursive=False)

    def start(self) -> None:
        self._debouncer.start()
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join()
        self._debouncer.stop()
        self._debouncer.join()
