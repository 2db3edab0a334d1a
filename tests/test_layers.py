"""The layers of ``shardws`` (docs/architecture.md), enforced on every module's imports.

Each module of the package belongs to one layer; a layer may import only the layers its
row allows, and only the modules allowed to do I/O import the I/O libraries. Imports
under ``if TYPE_CHECKING:`` are types only and not checked. A new module is checked as
soon as it exists: there is no list of files to update, only of layers.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shardws"

#: Layer of a module, by the longest matching name prefix.
LAYER_OF = {
    "shardws._core_ref": "core",
    "shardws._core": "core",
    "shardws.core": "core",
    "shardws.config": "foundation",
    "shardws.log": "foundation",
    "shardws.pure": "pure",
    "shardws.bus": "bus",
    "shardws.shm": "shm",
    "shardws.server": "server",
    "shardws.client": "client",
    "shardws.tools": "tools",
    "shardws.cli": "entry",
    "shardws.__main__": "entry",
    "shardws": "entry",  # the package's own __init__: the public names
}

#: Which layers a layer may import (itself included).
ALLOWED = {
    "core": {"core"},
    "foundation": {"core", "foundation"},
    "pure": {"core", "foundation", "pure"},
    "bus": {"core", "foundation", "pure", "bus"},
    "shm": {"core", "foundation", "pure", "shm"},
    "server": {"core", "foundation", "pure", "bus", "shm", "server"},
    "client": {"core", "pure", "client"},
    "tools": {"core", "foundation", "pure", "client", "server", "tools"},
    "entry": {"core", "foundation", "pure", "bus", "shm", "server", "client", "tools", "entry"},
}

#: Libraries that do I/O, start tasks or processes: none of them in the pure layer.
IO_LIBRARIES = {
    "asyncio", "aiohttp", "io", "mmap", "multiprocessing", "numpy", "os", "pathlib",
    "picows", "pickle", "select", "selectors", "shutil", "signal", "socket", "ssl",
    "subprocess", "threading", "uvloop", "zmq",
}  # fmt: skip

#: The only modules that may open ZeroMQ sockets (and the layer text says why).
ZMQ_USERS = {
    "shardws.bus.host",  # the host bus
    "shardws.bus.forwarder",  # the host bus's XSUB/XPUB forwarder (zmq.proxy)
    "shardws.bus.ingress",  # the backends' PULL socket
    "shardws.server.bridge",  # its own poller loop between the host bus and the peers
    "shardws.client.publisher",  # a backend's client of the ingress
    "shardws.cli",  # `shardws keygen`: zmq.curve_keypair
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    for prefix in sorted(LAYER_OF, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYER_OF[prefix]
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYER_OF")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import not under ``if TYPE_CHECKING:``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}:{node.lineno}: use absolute imports"
            base = node.module or ""
            for alias in node.names:
                # ``from shardws.pure import protocol`` imports the module shardws.pure.protocol
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if _is_module(candidate) else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("shardws"):
        return False
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: module_name(p))
def test_module_imports_respect_its_layer(path: Path) -> None:
    module = module_name(path)
    layer = layer_of(module)
    tree = ast.parse(path.read_text(), str(path))
    wrong = []
    for line, imported in runtime_imports(tree, module):
        top = imported.split(".")[0]
        if top == "shardws":
            target = layer_of(imported)
            if target not in ALLOWED[layer]:
                wrong.append(f"line {line}: {layer} layer imports {imported} ({target} layer)")
        elif top == "zmq" and module not in ZMQ_USERS:
            wrong.append(f"line {line}: imports zmq; only {sorted(ZMQ_USERS)} may")
        elif layer == "pure" and top in IO_LIBRARIES:
            wrong.append(f"line {line}: the pure layer imports {imported} (I/O)")
    assert not wrong, f"{module}:\n" + "\n".join(wrong)


def test_every_layer_rule_is_used() -> None:
    """The tables name only packages and modules that exist (no stale rules)."""
    names = {module_name(p) for p in modules()} | {"shardws._core"}
    for prefix in LAYER_OF:
        assert any(n == prefix or n.startswith(prefix + ".") for n in names), prefix
    assert names >= ZMQ_USERS


def test_the_checker_catches_a_forbidden_import() -> None:
    """The rule has teeth: a pure module importing the server, a socket or zmq fails."""
    tree = ast.parse("import socket\nfrom shardws.server import worker\nimport zmq.asyncio\n")
    imports = [name for _, name in runtime_imports(tree, "shardws.pure.example")]
    assert imports == ["socket", "shardws.server.worker", "zmq.asyncio"]
    assert layer_of("shardws.server.worker") not in ALLOWED["pure"]
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n")
    assert [name for _, name in runtime_imports(typed, "shardws.pure.example")] == ["typing"]


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports form no cycle (lazy imports inside functions excluded)."""
    graph: dict[str, set[str]] = {}
    for path in modules():
        module = module_name(path)
        tree = ast.parse(path.read_text())
        top_level = ast.Module(
            body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom | ast.If)],
            type_ignores=[],
        )
        graph[module] = {
            name for _, name in runtime_imports(top_level, module) if name.startswith("shardws.")
        }
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt in graph and not state.get(nxt):
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            walk(node)
