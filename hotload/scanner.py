"""From the actions directory to the module records of a new generation.

A scan walks the directory, applies the trust rules, hashes every module
and stores it as a blob, then probes only the modules whose content, or the
content of an in-tree module they import, changed since the previous
generation. Names are given and collisions refused last, over the whole
table, so the result does not depend on which file changed first.
"""

import concurrent.futures
import dataclasses
import os
import time

from oslo_log import log as logging

from hotload import exceptions
from hotload import loader
from hotload import manifest
from hotload import naming
from hotload import probe as probe_mod
from hotload import store
from hotload import trust

LOG = logging.getLogger(__name__)

#: Errors not decided by the module's own content (the whole table's
#: names, or the probe machinery failing): a module carrying one is
#: probed again at the next scan.
RETRIED_ERRORS = frozenset({'collision', 'reserved', 'probe'})
PROGRESS_EVERY = 50


@dataclasses.dataclass
class TreeSnapshot:
    """The accepted and refused modules of the directory at one moment.

    :param sources: Module name to the content that was hashed (and put in
        the blob store), including directories without ``__init__.py``.
    :param refused: Module name (or the path, when it has no valid name) to
        the reason the file is not accepted.
    """

    sources: dict[str, loader.SourceRef]
    refused: dict[str, manifest.ModuleError]

    def sha(self, name: str) -> str | None:
        ref = self.sources.get(name)
        return ref.sha256 if ref else None

    def modules(self) -> list[str]:
        """Names of the accepted modules that have code."""
        return sorted(n for n, ref in self.sources.items() if ref.sha256)


@dataclasses.dataclass
class ScanResult:
    """The outcome of one scan.

    :param modules: Records for the next generation.
    :param probed: Modules that were probed, sorted.
    :param duration: Seconds the scan took.
    """

    modules: dict[str, manifest.ModuleRecord]
    probed: list[str]
    duration: float


def _module_name(relpath: str) -> str | None:
    parts = relpath[:-len('.py')].split(os.sep)
    if parts[-1] == '__init__':
        parts.pop()
    if not parts or not all(trust.is_identifier(p) for p in parts):
        return None
    return '.'.join(parts)


def _holds_modules(directory: str) -> bool:
    """True when a ``.py`` file that would be loaded lies under it."""
    return any(not trust.is_ignored_name(name)
               for _dir, _dirs, files in os.walk(directory) for name in files)


def _refusal(path: str, message: str) -> manifest.ModuleError:
    return manifest.ModuleError(kind='refused', message=message, path=path)


def snapshot_tree(root: str, policy: trust.TrustPolicy,
                  blobs: store.BlobStore) -> TreeSnapshot:
    """Walk ``root``, check every module and store the accepted ones.

    :param root: The actions directory.
    :param policy: The trust rules.
    :param blobs: Where accepted contents are stored.
    :raises UntrustedRootError: when ``root`` itself fails the rules.
    """
    root = os.path.realpath(root)
    try:
        root_stat = os.stat(root)
    except OSError as exc:
        raise exceptions.UntrustedRootError(
            f'actions directory {root}: {exc.strerror}') from None
    problem = (policy.check_ancestors(root)
               or policy.check_dir(root, root_stat))
    if problem:
        raise exceptions.UntrustedRootError(
            f'actions directory {root} is not trusted: {problem}')
    sources: dict[str, loader.SourceRef] = {}
    refused: dict[str, manifest.ModuleError] = {}
    init_dirs: set[str] = set()
    dir_problems: dict[str, str | None] = {root: None}

    for dirpath, dirnames, filenames in os.walk(root):
        inherited = dir_problems[dirpath]
        for name in list(dirnames):
            path = os.path.join(dirpath, name)
            relpath = os.path.relpath(path, root)
            dirnames.remove(name)
            if trust.is_ignored_dir(name):
                continue
            if os.path.islink(path):
                target = os.path.realpath(path)
                if not target.startswith(root + os.sep):
                    refused[relpath] = _refusal(
                        relpath, f'symlink to {target} leads outside the '
                        f'actions directory')
                continue
            if not trust.is_identifier(name):
                if _holds_modules(path):
                    refused[relpath] = _refusal(
                        relpath, 'not a valid Python package name: the '
                        'modules under it cannot be imported')
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # removed while we walk; the next scan sees it
            dirnames.append(name)
            dir_problems[path] = inherited or policy.check_dir(relpath, st)
        for name in sorted(filenames):
            if trust.is_ignored_name(name):
                continue
            path = os.path.join(dirpath, name)
            relpath = os.path.relpath(path, root)
            module = _module_name(relpath)
            if module is None:
                refused[relpath] = _refusal(relpath, (
                    'the actions directory is mounted as a namespace '
                    'package: its own __init__.py is not loaded; move the '
                    'code to a module') if relpath == '__init__.py'
                    else 'not a valid Python module name')
                continue
            if name == '__init__.py':
                init_dirs.add(module)
                shadowed = sources.pop(module, None) or \
                    refused.pop(module, None)
                if shadowed:
                    # As in Python, the package wins over foo.py.
                    refused[shadowed.path] = _refusal(
                        shadowed.path, f'shadowed by the package '
                        f'{relpath}: a module and a package cannot share '
                        f'a name')
            problem = inherited
            data = None
            if not problem:
                problem, data = _read_checked(root, path, policy)
            if problem:
                refused[module] = _refusal(relpath, problem)
                continue
            sources[module] = loader.SourceRef(
                relpath, blobs.put(data), name == '__init__.py')

    for module in list(sources):
        parts = module.split('.')
        for depth in range(1, len(parts)):
            package = '.'.join(parts[:depth])
            if package not in sources and package not in init_dirs:
                sources[package] = loader.SourceRef(
                    package.replace('.', os.sep), None, True)
    return TreeSnapshot(sources, refused)


def _read_checked(root: str, path: str,
                  policy: trust.TrustPolicy) -> tuple[str | None, bytes]:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if os.path.islink(path):
        target = os.path.realpath(path)
        if not target.startswith(root + os.sep):
            return (f'symlink to {target} leads outside the actions '
                    f'directory'), b''
    else:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return f'cannot open: {exc.strerror}', b''
    # Checks on the open descriptor, so the file cannot be swapped between
    # the check and the read.
    with os.fdopen(fd, 'rb') as stream:
        problem = policy.check_file(os.fstat(fd))
        if problem:
            return problem, b''
        data = stream.read(policy.max_file_size + 1)
    if len(data) > policy.max_file_size:
        return (f'file grew past max_file_size ({policy.max_file_size} '
                f'bytes) while being read'), b''
    return None, data


class Scanner:
    """Turns the actions directory into the records of a generation.

    :param root: The actions directory.
    :param blobs: Blob store the probe reads sources from.
    :param probe: The probe (its package name must be ``package_name``).
    :param policy: The trust rules.
    :param package_name: Import name the directory is mounted as.
    :param action_prefix: Prefix of the action names.
    :param reserved_prefixes: Name prefixes no hot action may take.
    :param workers: Modules probed at the same time.
    """

    def __init__(self, root: str, blobs: store.BlobStore,
                 probe: probe_mod.Probe, policy: trust.TrustPolicy,
                 package_name: str, action_prefix: str,
                 reserved_prefixes: list[str], workers: int = 1) -> None:
        self.root = os.path.realpath(root)
        self.blobs = blobs
        self.probe = probe
        self.policy = policy
        self.package_name = package_name
        self.action_prefix = action_prefix
        self.reserved_prefixes = list(reserved_prefixes)
        self.workers = workers

    def scan(self, previous: manifest.Manifest,
             probe_all: bool = False) -> ScanResult:
        """Scan the directory against ``previous``.

        :param previous: The generation being served.
        :param probe_all: Probe every module, changed or not (an operator's
            ``mistral-hotload reload``, e.g. after installing a library a
            module imports).
        :raises UntrustedRootError: when the directory itself is refused;
            the caller keeps serving ``previous``.
        """
        started = time.monotonic()
        snapshot = snapshot_tree(self.root, self.policy, self.blobs)
        if previous.package_name != self.package_name:
            previous = manifest.Manifest.empty(self.package_name,
                                               self.action_prefix)
        stale = [name for name in snapshot.modules()
                 if probe_all or self._needs_probe(
                     previous.modules.get(name), snapshot, name)]
        results = self._probe_all(stale, snapshot)
        modules = self._records(previous, snapshot, results)
        modules = self._assign_names(previous, modules)
        return ScanResult(modules, sorted(stale),
                          time.monotonic() - started)

    @staticmethod
    def _needs_probe(record: manifest.ModuleRecord | None,
                     snapshot: TreeSnapshot, name: str) -> bool:
        if record is None:
            return True
        error = record.error
        if error and error.kind in RETRIED_ERRORS:
            return True
        if error and error.kind != 'refused':
            attempt = (error.sha256, error.imports)
        elif record.good:
            attempt = (record.good.sha256, record.good.imports)
        else:
            return True
        sha, imports = attempt
        if sha != snapshot.sha(name):
            return True
        return any(snapshot.sha(dep) != dep_sha
                   for dep, dep_sha in imports.items())

    def _probe_all(self, names: list[str], snapshot: TreeSnapshot
                   ) -> dict[str, probe_mod.ProbeResult]:
        results: dict[str, probe_mod.ProbeResult] = {}
        if not names:
            return results
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(self.probe.probe, name, snapshot.sources):
                       name for name in names}
            for done, future in enumerate(
                    concurrent.futures.as_completed(futures), 1):
                name = futures[future]
                try:
                    results[name] = future.result()
                except Exception as exc:
                    # The probe machinery itself failed (no memory to
                    # fork, say): that module waits for the next scan,
                    # the others go on.
                    LOG.exception('Probing %s failed', name)
                    results[name] = probe_mod.ProbeResult(
                        name, (), {}, manifest.ModuleError(
                            kind='probe', path=snapshot.sources[name].path,
                            message=f'the probe itself failed: {exc!r}'))
                if len(names) >= PROGRESS_EVERY and (
                        done % PROGRESS_EVERY == 0 or done == len(names)):
                    LOG.info('Probed %d/%d modules', done, len(names))
        return results

    def _version(self, name: str, sha: str,
                 result: probe_mod.ProbeResult) -> manifest.ModuleVersion:
        actions = tuple(manifest.ActionSpec(
            name=naming.action_name(self.action_prefix, name, e.class_name,
                                    e.declared_name),
            class_name=e.class_name, declared_name=e.declared_name,
            input=e.input, description=e.description, line=e.line)
            for e in result.exports)
        return manifest.ModuleVersion(
            sha256=sha, imports=result.imports,
            content_key=manifest.content_key(name, sha, result.imports),
            actions=actions, packages=result.packages)

    def _renamed(self, version: manifest.ModuleVersion | None,
                 module: str) -> manifest.ModuleVersion | None:
        if version is None:
            return None
        actions = tuple(dataclasses.replace(a, name=naming.action_name(
            self.action_prefix, module, a.class_name, a.declared_name))
            for a in version.actions)
        return dataclasses.replace(version, actions=actions)

    def _records(self, previous: manifest.Manifest, snapshot: TreeSnapshot,
                 results: dict[str, probe_mod.ProbeResult]
                 ) -> dict[str, manifest.ModuleRecord]:
        records: dict[str, manifest.ModuleRecord] = {}
        for name, refusal in snapshot.refused.items():
            old = previous.modules.get(name)
            records[name] = manifest.ModuleRecord(
                name, refusal.path,
                self._renamed(old.good, name) if old else None, refusal)
        for name in snapshot.modules():
            ref = snapshot.sources[name]
            old = previous.modules.get(name)
            last_good = self._renamed(old.good, name) if old else None
            result = results.get(name)
            if result is None:
                error = old.error if old and old.error and \
                    old.error.kind != 'refused' else None
                records[name] = manifest.ModuleRecord(
                    name, ref.path, last_good, error)
            elif result.error:
                error = dataclasses.replace(
                    result.error, sha256=ref.sha256, imports=result.imports)
                records[name] = manifest.ModuleRecord(
                    name, ref.path, last_good, error)
            else:
                records[name] = manifest.ModuleRecord(
                    name, ref.path, self._version(name, ref.sha256, result))
        return records

    def _assign_names(self, previous: manifest.Manifest,
                      records: dict[str, manifest.ModuleRecord]
                      ) -> dict[str, manifest.ModuleRecord]:
        """Refuse reserved and colliding names; incumbents keep theirs.

        A module whose new version takes a reserved name or one another
        module exports falls back to its last good version. Modules that
        serve what they served in the previous generation claim their names
        first; newcomers follow in path order. Repeats until no conflict is
        left (each round demotes at least one module, so it ends).
        """
        def served_before(record: manifest.ModuleRecord) -> bool:
            old = previous.modules.get(record.name)
            return bool(old and old.good and record.good
                        and old.good.sha256 == record.good.sha256)

        order = sorted(records.values(),
                       key=lambda r: (not served_before(r), r.path))
        records = dict(records)
        while True:
            claims: dict[str, tuple[manifest.ModuleRecord,
                                    manifest.ActionSpec]] = {}
            conflict = None
            for record in (records[r.name] for r in order):
                for action in record.actions:
                    reserved = naming.reserved_prefix(action.name,
                                                      self.reserved_prefixes)
                    holder = claims.get(action.name)
                    if reserved or holder:
                        conflict = (record, action, reserved, holder)
                        break
                    claims[action.name] = (record, action)
                if conflict:
                    break
            if conflict is None:
                return records
            record, action, reserved, holder = conflict
            records[record.name] = self._demoted(previous, record, action,
                                                 reserved, holder)

    def _demoted(self, previous, record, action, reserved, holder):
        if reserved:
            error = manifest.ModuleError(
                kind='reserved',
                message=f'action name {action.name} (class '
                        f'{action.class_name}) uses the reserved prefix '
                        f'{reserved!r} (reserved_prefixes)',
                path=record.path, line=action.line)
        else:
            other, other_action = holder
            error = manifest.ModuleError(
                kind='collision',
                message=f'action name {action.name} (class '
                        f'{action.class_name}) is already exported by '
                        f'{other.path}:{other_action.line} (class '
                        f'{other_action.class_name}); rename the class or '
                        f'set __action_name__',
                path=record.path, line=action.line)
        if record.good:
            error = dataclasses.replace(error, sha256=record.good.sha256,
                                        imports=record.good.imports)
        old = previous.modules.get(record.name)
        fallback = self._renamed(old.good, record.name) if old else None
        if fallback is not None and record.good is not None and \
                fallback.sha256 == record.good.sha256:
            fallback = None  # the served version itself conflicts
        return manifest.ModuleRecord(record.name, record.path, fallback,
                                     error)
