"""No import circles in the package, between modules or between its rooms.

Read from the source with ``ast`` (nothing is imported, no daemons): every
``import``/``from ... import`` of a ``networking_dvs_fabric`` module, at module
level or inside a function (a lazy import still ties the two modules together).
Imports under ``if TYPE_CHECKING:`` are left out: they only name types for
annotations and never run.

A "room" is a first-level sub-package (``ml2``, ``journal``, ``vcenter``...) or a
top-level module (``runtime``, ``topology``...).  The rooms must form layers: a
room may use the rooms below it and never one above, so no chain of imports
leads from a room back to itself.
"""
from __future__ import annotations

import ast
import unittest
from pathlib import Path

import networking_dvs_fabric

PACKAGE = "networking_dvs_fabric"
ROOT = Path(networking_dvs_fabric.__file__).resolve().parent


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, current: str, is_package: bool) -> set[str]:
    """Modules of the package that ``tree`` imports (executed imports only)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = current.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # ``from pkg import module`` imports pkg.module
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports (only names that are modules)."""
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = _imports(tree, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in paths and t != name
                       and t != PACKAGE}      # the package's own __init__ holds nothing
    return graph


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for source, targets in graph.items():
        edges = rooms.setdefault(room(source), set())
        edges.update(room(t) for t in targets if room(t) != room(source))
    return rooms


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (first node repeated at the end), or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


class TestImportLayers(unittest.TestCase):
    def test_no_circle_between_modules(self):
        cycle = find_cycle(import_graph())
        self.assertIsNone(cycle, f"import circle: {' -> '.join(cycle or [])}")

    def test_no_circle_between_rooms(self):
        cycle = find_cycle(room_graph(import_graph()))
        self.assertIsNone(cycle, f"rooms import each other: {' -> '.join(cycle or [])}")

    def test_the_checker_sees_circles(self):
        # The checks above would pass on a reader that saw no imports at all: show
        # that this one finds a circle through a lazy import, and a room circle.
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            pkg = Path(tmp) / PACKAGE
            for sub in ("", "ml2", "journal"):
                (pkg / sub).mkdir(exist_ok=True)
                (pkg / sub / "__init__.py").write_text("")
            (pkg / "ml2" / "driver.py").write_text(
                f"from {PACKAGE}.journal import worker\n")
            (pkg / "journal" / "worker.py").write_text(
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                f"    from {PACKAGE}.ml2 import driver  # annotations only: not a circle\n")
            (pkg / "journal" / "store.py").write_text(
                f"def f():\n    from {PACKAGE}.ml2.driver import X\n")
            graph = import_graph(pkg)
            self.assertIsNone(find_cycle(graph), graph)
            self.assertEqual(["journal", "ml2", "journal"],
                             find_cycle(room_graph(graph)))
            (pkg / "ml2" / "driver.py").write_text(
                f"from {PACKAGE}.journal import store\n")
            self.assertEqual([f"{PACKAGE}.journal.store", f"{PACKAGE}.ml2.driver",
                              f"{PACKAGE}.journal.store"], find_cycle(import_graph(pkg)))

    def test_drivers_and_workers_do_not_import_each_other(self):
        graph = import_graph()
        drivers = {f"{PACKAGE}.ml2.vsphere_dvs", f"{PACKAGE}.ml2.fabric_hwvtep"}
        workers = {f"{PACKAGE}.fabric.worker", f"{PACKAGE}.vcenter.port_group_worker",
                   f"{PACKAGE}.vcenter.sweeper", f"{PACKAGE}.watcher.worker",
                   f"{PACKAGE}.sync.full_sync"}
        for driver in drivers:
            self.assertEqual(set(), graph[driver] & (drivers - {driver}), driver)
        for worker in workers:
            self.assertEqual(set(), graph[worker] & (drivers | workers), worker)
