"""The in-tree imports of a probed module, read from the sources.

Runs in the probe's worker (:mod:`hotload._probe_child`). The import
itself only shows the modules that ran; the content key must also pin the
ones named by import statements that did not run yet (inside functions),
and the cycle check must tell module-level imports from those in
functions. Both come from the syntax trees, parsed once per worker and
cached by content.
"""

import ast
import contextlib
from collections.abc import Callable

from hotload import _probe_exports
from hotload import loader

#: Syntax trees by sha256; see parse().
_parsed: dict[str, ast.Module] = {}
#: What static_imports() found, by module and content.
_imports_found: dict[tuple, list[tuple[str, int, bool]]] = {}

#: (module name, line of the import statement that leads to it).
Step = tuple[str, int]


def parse(sha: str, read_source: Callable[[str], bytes],
          filename: str = '<unknown>') -> ast.Module:
    """The syntax tree of the content ``sha``, parsed once per worker.

    The module is parsed for its imports before the import, for its
    classes after, and again with every in-tree module for the import
    closure: a parse of a module of ten classes is about 2 ms.

    :param sha: The content's sha256 (the cache key).
    :param read_source: Returns the content of a sha256.
    :param filename: Named in a SyntaxError.
    :raises SyntaxError, ValueError: not Python; not cached.
    """
    tree = _parsed.get(sha)
    if tree is None:
        tree = _parsed[sha] = ast.parse(read_source(sha), filename=filename)
    return tree


def _import_targets(module: str, is_package: bool, package_name: str,
                    node: ast.AST) -> list[str]:
    """In-tree module names an import statement may refer to."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == package_name or alias.name.startswith(
                    package_name + '.'):
                targets.append(alias.name[len(package_name) + 1:])
        return [t for t in targets if t]
    if not isinstance(node, ast.ImportFrom):
        return targets
    if node.level:
        parts = module.split('.') if module else []
        if not is_package:
            parts = parts[:-1]
        if node.level - 1 > len(parts):
            return targets
        parts = parts[:len(parts) - (node.level - 1)]
        base = '.'.join(parts + ([node.module] if node.module else []))
    elif node.module and (node.module == package_name
                          or node.module.startswith(package_name + '.')):
        base = node.module[len(package_name) + 1:]
    else:
        return targets
    if base:
        targets.append(base)
    for alias in node.names:
        targets.append(f'{base}.{alias.name}' if base else alias.name)
    return targets


def static_imports(module: str, ref: loader.SourceRef, tree: ast.Module,
                   package_name: str) -> list[tuple[str, int, bool]]:
    """(target, line, at module level) for each in-tree import in ``tree``.

    Cached: the probed module's are read before its import and again for
    the import closure.

    :param module: The module's dotted name inside the package.
    :param ref: Its source (is it a package: where relative imports go).
    :param tree: Its syntax tree (see :func:`parse`).
    :param package_name: Import name the actions directory is mounted as.
    """
    key = (module, ref.sha256, ref.is_package, package_name)
    found = _imports_found.get(key)
    if found is None:
        found = _imports_found[key] = _find_imports(module, ref, tree,
                                                    package_name)
    return found


def _find_imports(module: str, ref: loader.SourceRef, tree: ast.Module,
                  package_name: str) -> list[tuple[str, int, bool]]:
    found = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in _probe_exports.blocks(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _import_targets(module, ref.is_package,
                                              package_name, child):
                    found.append((target, child.lineno, top_level))
            nested = not isinstance(child, (ast.FunctionDef,
                                            ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top_level and nested)

    visit(tree, True)
    return found


def find_cycle(start: str, edges: dict[str, list[Step]]
               ) -> list[Step] | None:
    """A module-level import cycle reachable from ``start``, or None.

    :param start: The probed module.
    :param edges: Module-level imports by module (see :func:`closure`).
    :returns: The cycle's modules, each with the line of the import that
        leads to it; the first module again at the end.
    """
    stack: list[Step] = []
    on_stack: set[str] = set()
    done: set[str] = set()

    def visit(name: str, line: int) -> list[Step] | None:
        stack.append((name, line))
        on_stack.add(name)
        for target, target_line in edges.get(name, []):
            if target in on_stack:
                names = [n for n, _ in stack]
                return stack[names.index(target):] + [(target, target_line)]
            if target not in done:
                cycle = visit(target, target_line)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(name)
        done.add(name)
        return None

    return visit(start, 0)


def closure(importer: loader.TreeImporter, package_name: str
            ) -> tuple[dict[str, str | None], dict[str, list[Step]]]:
    """In-tree imports (closure) and module-level import edges.

    Starts from the modules the import loaded and follows every import
    statement found in their sources, also those inside functions that
    did not run yet, and theirs in turn: all of them are pinned in the
    content key, so the executor can load them at the version validated.
    Only module-level statements make edges for the cycle check: an import
    inside a function is how Python code breaks a cycle.

    :param importer: The importer the probed module was loaded through.
    :param package_name: Import name the actions directory is mounted as.
    :returns: The imports, name to sha256 (None: tried but absent); and
        the edges, for :func:`find_cycle`.
    """
    imports: dict[str, str | None] = dict(importer.requested)
    edges: dict[str, list[Step]] = {}
    pending = [name for name, sha in imports.items() if sha]
    parsed = set()
    while pending:
        name = pending.pop()
        if name in parsed:
            continue
        parsed.add(name)
        ref = importer.sources[name]
        try:
            tree = parse(ref.sha256, importer.read_source)
        except (SyntaxError, ValueError):
            continue
        for target, line, top_level in static_imports(name, ref, tree,
                                                      package_name):
            target_ref = importer.sources.get(target)
            if target_ref is None or target_ref.sha256 is None:
                continue
            if target not in imports:
                imports[target] = target_ref.sha256
                pending.append(target)
            # Importing a submodule of one's own package while it
            # initialises is ordinary Python, not a cycle.
            if top_level and target != name and \
                    not name.startswith(target + '.'):
                edges.setdefault(name, []).append((target, line))
    return imports, edges


def loaded_trees(importer: loader.TreeImporter,
                 imports: dict[str, str | None]
                 ) -> list[tuple[str, ast.Module]]:
    """(path, syntax tree) of the in-tree modules the import loaded.

    :param importer: The importer the probed module was loaded through.
    :param imports: The closure (see :func:`closure`); only the modules
        the import actually requested are taken.
    """
    trees = []
    for name, sha in imports.items():
        if not sha or name not in importer.requested:
            continue
        with contextlib.suppress(SyntaxError, ValueError, OSError):
            trees.append((importer.sources[name].path,
                          parse(sha, importer.read_source)))
    return trees
