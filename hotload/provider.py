"""The action provider that Mistral loads in its API, engine and executor.

Registered in the entry point group ``mistral.action.providers`` as
``hotload``. It serves the action table of the newest manifest generation:

* ``find()`` and ``find_all()`` answer from an in-memory table and never
  wait for a reload: one thread builds the next table while lookups keep
  answering from the current one, and a new table is swapped in by one
  reference assignment (readers never take the reload lock; only a lookup
  that starts a refresh takes a momentary one). Before answering, a
  lookup compares one ``stat`` of ``manifest.json`` with the last one
  examined (no read); when it changed and no signal arrived, the lookup
  starts a refresh in the background (one at a time) rather than paying
  for it. The trade-off: for a moment after a publish, a lookup may get
  the previous version of an action, or one just removed, as it would had
  it come a little earlier. Only ``find()`` of a name the current table
  lacks waits for a pending refresh, at most :data:`FIND_WAIT` seconds,
  so a file just dropped is found by the first workflow that uses it even
  without a signal; a name that stays unknown costs that wait only while
  a refresh is under way. On a cluster node, such a name with the action
  prefix also waits as long for this node's mirror when the publisher
  serves a newer generation.
* The table only moves forward: a ``manifest.json`` that is missing (the
  file or the state directory was removed), untrusted, unreadable or of a
  lower generation than the one served (a stale or foreign state
  directory) is reported once per version of the file, in the log and in
  ``describe()['errors']``, and the current table keeps serving until the
  daemon publishes a usable generation.
* A new generation costs about what changed: the index names each
  module's record by sha256, and the provider keeps the records (and
  their descriptors) it holds, reading only those it does not.
* Descriptors need no user code: names, descriptions and parameters come
  from the manifest, so the API process never imports an action module.
* ``instantiate()`` (in the engine) loads the class of exactly the version
  the table names, mounted under its content key, and wraps the action in
  :class:`~hotload.descriptors.HotloadAction`. Its serializer sends the
  content key and a generation that served it with the action, and the
  executor loads that same
  content from the blob store (checking every hash), whatever generation
  its own table is at. On a cluster node (``cluster_key`` and a
  transport) whose mirror lacks that content yet, the executor fetches
  exactly it from the publisher, signed and hash-checked, within a
  bounded time, and keeps it in memory (:mod:`hotload.fetch`). If the
  content cannot be had, the action fails at once with an error naming
  the action, the key, the host and what the fetch found; another version
  is never run instead.
* Module versions are cached by content key (:mod:`hotload.versions`):
  an unchanged module is loaded once per process; versions the table no
  longer names are dropped from the cache once no action holds them and
  they were not used for a while, or a few other such versions were used
  since (:data:`hotload.versions.IDLE_VERSIONS`).
* A serialized action is checked field by field before anything is read:
  a reference that is malformed, names a non-hex hash or an unknown key
  fails the action cleanly, like missing content.
* ``describe()`` (``mistral-hotload status``) gives the generation and
  ``digest``, the sha256 of the exact ``manifest.json`` bytes the table
  was built from, which ``status --cluster`` compares across nodes.
* A hot action whose name another provider of the process serves (an
  installed plug-in, mistral-extra's actions with an empty prefix) is not
  served: ``find()`` returns None for it, so the other provider's action
  wins whatever the entry point order, and ``find_all()`` omits it; the
  clash is in ``describe()['clashes']`` and ``['errors']``
  (:mod:`hotload.clashes`). Each table is checked before it is swapped
  in, asking only for names not asked before; the one built before
  Mistral had built its other providers is checked at the first lookup.
"""

import dataclasses
import datetime
import functools
import os
import sys
import threading
import time
import weakref
from typing import Any

from mistral_lib import actions as ml_actions
from oslo_config import cfg
from oslo_log import log as logging

from hotload import clashes as clashes_mod
from hotload import conf as hotload_conf
from hotload import descriptors as descriptors_mod
from hotload import exceptions
from hotload import fetch
from hotload import manifest as manifest_mod
from hotload import signals
from hotload import store
from hotload import trust
from hotload.descriptors import HotloadActionDescriptor
from hotload.versions import VersionCache

LOG = logging.getLogger(__name__)
#: Seconds find() of a name the table lacks waits for a refresh under way.
FIND_WAIT = 2.0


@dataclasses.dataclass(frozen=True)
class _Table:
    stat_key: tuple | None
    manifest: manifest_mod.Manifest | None
    descriptors: dict[str, HotloadActionDescriptor]
    loaded_at: str = ''
    #: sha256 of the exact bytes of the manifest.json the table was
    #: built from, which ``status --cluster`` compares across nodes.
    digest: str | None = None
    #: Names of ``descriptors`` another provider of the process serves,
    #: which are not served; None until checked (the other providers are
    #: not known yet).
    clashes: dict[str, clashes_mod.Clash] | None = None


def _key(st: os.stat_result | None) -> tuple | None:
    """What identifies one version of ``manifest.json``, and its trust."""
    if st is None:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_uid, st.st_mode)


#: A stat key no manifest.json has: the first refresh always looks.
_NEVER: tuple = ()


def _after_fork(provider_ref: weakref.ref) -> None:
    """Reset a provider's thread state in a forked child.

    A server may fork after creating its provider: the child has none of
    the parent's threads, so a lock one of them held, or a background
    refresh it ran, would never end there.
    """
    provider = provider_ref()
    if provider is not None:
        provider._reload_lock = threading.Lock()
        provider._background_lock = threading.Lock()
        provider._swap_lock = threading.Lock()
        provider._background = None


def _service_name() -> str:
    """api, engine, executor... from ``mistral-server --server NAME``."""
    argv = sys.argv
    for index, arg in enumerate(argv):
        if arg == '--server' and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith('--server='):
            return arg.split('=', 1)[1]
    return os.path.basename(argv[0]) if argv and argv[0] else 'python'


class HotloadActionProvider(ml_actions.ActionProvider):
    """Serves the hot actions of the node's current generation.

    :param name: Provider name Mistral registered it under.
    :param conf: Configuration to read ``[hotload]`` and the messaging
        transport from; Mistral's global configuration by default.
    :param others: Lists the other action providers of the process (None
        while they are not known), whose names hot actions must not take;
        by default those of Mistral's system provider, which Mistral
        builds right after this one (see :mod:`hotload.clashes`).
    :param listen: False for a one-shot tool (``mistral-hotload run``):
        no signal listener, so the process neither hears generations
        announced (a lookup still notices them) nor answers ``status`` as
        a Mistral process.
    """

    def __init__(self, name: str = 'hotload',
                 conf: cfg.ConfigOpts | None = None,
                 others: clashes_mod.Others | None = None,
                 listen: bool = True) -> None:
        super().__init__(name)
        self._listen = listen
        self.conf = conf or cfg.CONF
        if hotload_conf.GROUP not in self.conf:
            hotload_conf.register_opts(self.conf)
        options = self.conf.hotload
        #: The node this process is on: Mistral's ``[DEFAULT] host`` when
        #: set (several nodes can share a machine), else the host name.
        self.host = hotload_conf.node_name(self.conf)
        self.states = store.ManifestStore(options.state_dir)
        #: Fetches what this node lacks of a version an engine chose (its
        #: mirror is behind); only on a cluster node.
        self.fetcher = fetch.ContentFetcher(self.conf, self.states.blobs) \
            if fetch.enabled(self.conf) else None
        self.cache = VersionCache(self.states.blobs, options.actions_dir,
                                  fetch=self.fetcher)
        descriptors_mod.bind(self.cache, self.host)
        #: Which hot names the other providers of the process serve.
        self.clashes = clashes_mod.ClashDetector(self, others)
        self._table = _Table(None, None, {}, clashes={})
        #: The modules of the table, by the sha256 of their record.
        self._modules: dict[str, descriptors_mod.Module] = {}
        #: Stat key of the last manifest.json examined, whether served,
        #: refused or missing: lookups start a refresh when it changes.
        self._seen_key: tuple | None = _NEVER
        # Taken by whoever builds the next table; never by a lookup.
        self._reload_lock = threading.Lock()
        # Held only to swap a table in: by a refresh, and by the first
        # lookup, which installs the clash check of a table built before
        # the other providers were known (see _checked()).
        self._swap_lock = threading.Lock()
        #: Set when the background refresh under way, if any, ends.
        self._background: threading.Event | None = None
        self._background_lock = threading.Lock()
        #: Notified when a new table is swapped in.
        self._swapped = threading.Condition()
        os.register_at_fork(after_in_child=functools.partial(
            _after_fork, weakref.ref(self)))
        self._policy = trust.TrustPolicy(options.trusted_owners,
                                         options.max_file_size)
        self._listener: signals.Listener | None = None
        self._listener_pid: int | None = None
        # Mistral builds providers in the worker that serves (never in a
        # server's master), the executor at start, the API and engine at
        # their first lookup; listen from there. A provider that raised
        # here would break every lookup of every action, so a bad state
        # directory is logged and an empty table served until it is fixed.
        try:
            self.refresh()
        except Exception:
            LOG.exception('Cannot load hot actions from %s',
                          self.states.state_dir)
        self._ensure_listener()

    @property
    def generation(self) -> int:
        """Generation of the table being served (0: none yet)."""
        manifest = self._table.manifest
        return manifest.generation if manifest else 0

    def find(self, action_name, namespace=None):
        table, pending = self._current()
        if table.clashes and action_name in table.clashes:
            # Another provider serves it: that one answers.
            return None
        descriptor = table.descriptors.get(action_name)
        if descriptor is None and pending is not None:
            # Perhaps a file just dropped, and this the first workflow to
            # use it: worth a short wait (see the module docstring).
            pending.wait(FIND_WAIT)
            descriptor = self._served(action_name)
        if descriptor is None and self._behind_publisher(action_name):
            descriptor = self._served(action_name)
        return descriptor

    def _served(self, action_name: str) -> HotloadActionDescriptor | None:
        """The descriptor the current table serves under ``action_name``."""
        table = self._checked(self._table)
        if table.clashes and action_name in table.clashes:
            return None
        return table.descriptors.get(action_name)

    def _behind_publisher(self, action_name: str) -> bool:
        """On a cluster node, wait (at most :data:`FIND_WAIT` seconds) for
        this node's mirror when the publisher serves a newer generation.

        An engine of this node may be asked for an action the moment the
        publisher's node lists it, before this node's mirror copied it.
        Only names with the action prefix can be hot actions, so others
        cost nothing.
        """
        prefix = self.conf.hotload.action_prefix
        if self.fetcher is None or not prefix or \
                not action_name.startswith(prefix + '.'):
            return False
        deadline = time.monotonic() + FIND_WAIT
        target = self.fetcher.publisher_generation()
        if target is None:
            return False
        while self.generation < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Woken by the swap the mirror's signal makes; the refresh
            # catches a publish whose signal was lost.
            with self._swapped:
                self._swapped.wait_for(lambda: self.generation >= target,
                                       min(remaining, 0.05))
            self.refresh()
        return True

    def find_all(self, namespace=None, limit=None, sort_fields=None,
                 sort_dirs=None, filters=None):
        # Mistral filters, sorts and pages the result itself.
        table = self._current()[0]
        if table.clashes:
            return [d for name, d in table.descriptors.items()
                    if name not in table.clashes]
        return list(table.descriptors.values())

    def _current(self) -> tuple[_Table, threading.Event | None]:
        """The table to answer from, and the refresh under way, if any."""
        self._ensure_listener()
        # The key first: a refresh swaps the table in before it records
        # the key, so a lookup that sees the new key reads the new table.
        fresh = _key(self._stat()) == self._seen_key
        table = self._table
        if table.clashes is None:
            table = self._checked(table)
        if fresh:
            return table, None
        return table, self._refresh_in_background()

    def _checked(self, table: _Table) -> _Table:
        """``table`` with its clashes checked, when they can be.

        Only a table built before Mistral had built its other providers
        (the first one, built when this provider is) is unchecked: the
        first lookup checks it and swaps the result in, unless a newer
        table was swapped in meanwhile (a refresh checks its own).
        """
        if table.clashes is not None:
            return table
        found = self.clashes.check(table.descriptors)
        if found is None:
            return table
        checked = dataclasses.replace(table, clashes=found)
        with self._swap_lock:
            installed = self._table is table
            if installed:
                self._table = checked
        if installed:
            self._log_clashes(checked, None)
        return checked

    def _log_clashes(self, table: _Table,
                     before: dict[str, clashes_mod.Clash] | None) -> None:
        """Log each clash of ``table`` that ``before`` did not have."""
        prefix = table.manifest.action_prefix if table.manifest else ''
        for name, clash in (table.clashes or {}).items():
            if not before or name not in before:
                LOG.warning('Not serving %s', clashes_mod.message(
                    clash, table.descriptors[name], prefix))

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.states.current_path)
        except OSError:  # refresh() tells why
            return None

    def _refresh_in_background(self) -> threading.Event:
        """Start a refresh unless one is under way; set when it ends."""
        with self._background_lock:
            if self._background is not None:
                return self._background
            done = self._background = threading.Event()
        try:
            threading.Thread(target=self._refresh_then_set, args=(done,),
                             daemon=True, name='hotload-refresh').start()
        except RuntimeError:  # no thread to be had: the next lookup retries
            LOG.exception('Cannot start a hot action refresh')
            self._refresh_then_set(done, run=False)
        return done

    def _refresh_then_set(self, done: threading.Event,
                          run: bool = True) -> None:
        try:
            if run:
                self.refresh()
        except Exception:  # the next change of the manifest retries
            LOG.exception('Cannot refresh hot actions from %s',
                          self.states.state_dir)
        finally:
            with self._background_lock:
                self._background = None
            done.set()

    def refresh(self) -> bool:
        """Load the newest generation if it changed; True if swapped.

        Called by the signal listener, by a background thread a lookup
        started, or directly. A manifest that cannot be used (missing,
        untrusted, unreadable, or of a lower generation than the one
        served) is refused once per version of the file: logged, listed
        in ``describe()['errors']``, and the table being served stays;
        lookups do not read it again until it changes.
        """
        with self._reload_lock:
            path = self.states.current_path
            try:
                st = os.stat(path)
            except OSError as exc:
                st, missing = None, str(exc)
            key = _key(st)
            if key == self._seen_key:
                return False
            try:
                index = data = None
                if st is not None:
                    self._check_trusted(st)
                    data = self._read_manifest()
                if data is not None:
                    index = manifest_mod.Index.from_json(data, path)
                if index is None:
                    self._seen_key = key
                    # Someone removed the file or the state directory:
                    # nothing to serve instead, and emptying the table
                    # would fail every hot action until the next publish.
                    if self._table.manifest is not None:
                        self._refuse(
                            f'{missing if st is None else path + " vanished"}'
                            f'; serving on until the daemon publishes a '
                            f'generation')
                    return False
                if index.generation < self.generation and \
                        not self._is_reset(index):
                    raise exceptions.ManifestError(
                        f'{path}: generation '
                        f'{index.generation} is older than the generation '
                        f'{self.generation} being served: a stale or foreign '
                        f'state directory')
                modules = self._modules_of(index)
            # A provider must never break Mistral's lookups, whatever is on
            # disk: anything here is reported, and the old table serves.
            except Exception as exc:  # noqa: BLE001
                self._seen_key = key
                self._refuse(str(exc))
                return False
            current = manifest_mod.Manifest(
                index.generation, index.created_at, index.package_name,
                index.action_prefix,
                {name: module.record for name, module in modules.items()},
                index.disabled, index.schema,
                known_shas=dict(index.records))
            descriptors = {}
            for module in modules.values():
                descriptors.update(module.descriptors)
            for name in index.disabled:
                descriptors.pop(name, None)
            self._modules = {index.records[name]: module
                             for name, module in modules.items()}
            self.cache.retain({module.record.good.content_key
                               for module in modules.values()
                               if module.record.good})
            before = self._table.clashes
            table = _Table(key, current, descriptors,
                           time.strftime('%Y-%m-%dT%H:%M:%S%z'),
                           store.sha256_hex(data),
                           clashes=self.clashes.check(descriptors))
            # Table first: a lookup that sees the new key must find the
            # table built from it.
            with self._swap_lock:
                self._table = table
            self._seen_key = key
        self._log_clashes(table, before)
        LOG.info('Serving hot action generation %d (%d actions)',
                 current.generation,
                 len(descriptors) - len(table.clashes or ()))
        with self._swapped:
            self._swapped.notify_all()
        return True

    def _modules_of(self, index: manifest_mod.Index
                    ) -> dict[str, descriptors_mod.Module]:
        """The modules ``index`` names: those this process holds (same
        record sha256) as they are, the others read from the store.

        A generation that changes one module costs one record read and
        that module's descriptors, whatever the size of the table.
        """
        modules = {}
        for name, sha in index.records.items():
            module = self._modules.get(sha)
            if module is None or module.record.name != name or \
                    module.package_name != index.package_name:
                module = descriptors_mod.Module.of(
                    self.states.read_record(name, sha), index.package_name,
                    index.generation, self.cache)
            modules[name] = module
        return modules

    def _read_manifest(self) -> bytes | None:
        """The bytes of ``manifest.json``; None when there is none."""
        try:
            with open(self.states.current_path, 'rb') as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def _is_reset(self, candidate: manifest_mod.Index) -> bool:
        """True when a lower generation was built after the served one.

        A running daemon keeps numbers increasing even when its state
        directory is removed; one that starts on an empty state directory
        (an operator reset it while the daemon was stopped) begins at 1
        again. Such a generation is newer than the one served, and
        refusing it would leave this process on the old table until the
        numbers caught up. An old copy put back (a backup restored) is
        older, and stays refused.
        """
        served = self._table.manifest
        try:
            newer = (datetime.datetime.fromisoformat(candidate.created_at)
                     > datetime.datetime.fromisoformat(served.created_at))
        except (AttributeError, TypeError, ValueError):
            return False
        if newer:
            LOG.warning('Hot action generation %d was built after the '
                        'generation %d served: the state directory was '
                        'reset; taking it', candidate.generation,
                        served.generation)
        return newer

    def _refuse(self, problem: str) -> None:
        LOG.error('Keeping hot action generation %d: %s', self.generation,
                  problem)
        self.cache.errors.append(problem)

    def _check_trusted(self, st: os.stat_result) -> None:
        """Refuse a manifest someone untrusted could have written.

        The manifest names the code this process runs (blobs are checked
        against its hashes), so it gets the trust rules of the actions
        directory: a trusted owner, not writable by group or others, in a
        state directory that is the same.
        """
        problem = (self._policy.check_owner_and_mode(st, 'manifest.json')
                   or self._policy.check_dir(
                       self.states.state_dir,
                       os.stat(self.states.state_dir))
                   or self._policy.check_ancestors(self.states.state_dir))
        if problem:
            raise exceptions.UntrustedManifestError(
                f'{self.states.current_path} is not trusted: {problem}')

    def _ensure_listener(self) -> None:
        # Mistral creates providers lazily, and a server may fork after
        # creating one: listen from the process that serves, once. In a
        # thread: connecting to a broker that is down must not hold up a
        # lookup.
        pid = os.getpid()
        if self._listener_pid == pid or not self._listen:
            return
        self._listener_pid = pid
        threading.Thread(target=self._start_listener, daemon=True,
                         name='hotload-listener').start()

    def describe(self) -> dict[str, Any]:
        """What this process serves, for ``mistral-hotload status``.

        ``clashes`` maps each hot action name another provider of this
        process serves (so this one does not) to that provider's name;
        None when the other providers are not known yet. ``errors`` has a
        line for each, naming both sides and the fix.
        """
        table = self._checked(self._table)
        clashes = table.clashes
        prefix = table.manifest.action_prefix if table.manifest else ''
        errors = list(self.cache.errors)
        errors += [clashes_mod.message(clash, table.descriptors[name],
                                        prefix)
                   for name, clash in sorted((clashes or {}).items())]
        errors += [f'action provider {name} could not be asked whether it '
                   f'serves hot action names: {problem}'
                   for name, problem in sorted(
                       self.clashes.problems().items())]
        return {
            'host': self.host,
            'service': _service_name(),
            'pid': os.getpid(),
            'generation': self.generation,
            'digest': table.digest,
            'loaded_at': table.loaded_at,
            'actions': len(table.descriptors) - len(clashes or ()),
            'clashes': None if clashes is None else {
                name: clash.provider for name, clash in clashes.items()},
            'errors': errors,
            'loaded': sorted(self.cache.loaded()),
        }

    def _start_listener(self) -> None:
        try:
            self._listener = signals.Listener.start(
                self.conf, self.refresh, self.describe)
        except Exception:  # signals only speed things up
            LOG.exception('Cannot listen for hotload signals; new '
                          'generations are still noticed on each lookup')
