"""The layers of ``shardws`` (docs/architecture.md), enforced on every module's imports.

Each module of the package belongs to one layer; a layer may import only the layers its
row allows, and only the modules allowed to do I/O import the I/O libraries. Imports
under ``if TYPE_CHECKING:`` are types only and not checked for layers; they count for
the engine seam (the fronts reach the cluster only through ``server.engine``) and for
import cycles, so that no loop of references hides behind them. A new module is checked
as soon as it exists: there is no list of files to update, only of layers.
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
    "picows", "pickle", "redis", "select", "selectors", "shutil", "signal", "socket",
    "ssl", "subprocess", "threading", "uvloop", "zmq",
}  # fmt: skip

#: The only modules that may open ZeroMQ sockets (and the layer text says why).
ZMQ_USERS = {
    "shardws.bus.host",  # the host bus
    "shardws.bus.forwarder",  # the host bus's XSUB/XPUB forwarder (zmq.proxy)
    "shardws.bus.ingress",  # the backends' PULL socket
    "shardws.server.bridge",  # its own poller loop between the host bus and the peers
    "shardws.server.crosshost",  # the bridge's and the hub's sockets on the host bus
    "shardws.server.redishub",  # between the host bus and Redis
    "shardws.client.publisher",  # a backend's client of the ingress
    "shardws.cli",  # `shardws keygen`: zmq.curve_keypair
}

#: The only modules that may import the ``redis`` package (an optional extra: the
#: default install has no Redis, so nothing else may need it).
REDIS_USERS = {
    "shardws.server.redishub",  # the hub process: its Redis connections
    "shardws.server.redisconn",  # every process's connections to Redis
    "shardws.server.redisclusterhub",  # the hub on a Redis Cluster: one link per master
    "shardws.server.redisclustercalls",  # script calls routed to a cluster's masters
    "shardws.server.redishistory",  # history channels in Redis: its error replies
    "shardws.server.redispusher",  # Redis's refusals of its scripts
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


#: The fronts: the native protocol (the worker and its connections), the Pusher front,
#: the admin's HTTP API. They reach the cluster through ``server.engine`` (and open the
#: configured one with ``server.engines``), never through an engine's parts.
FRONTS = {
    "shardws.server.worker",
    "shardws.server.connection",
    "shardws.server.pusher",
    "shardws.server.pusherapi",
    "shardws.server.admin",
}
BEHIND_THE_SEAM = {
    "shardws.server.mesh",  # the mesh engine
    "shardws.server.owners",  # the mesh's deciders: history, presence
    "shardws.server.pusherowner",  # ... Pusher rosters, occupancy, cache
    "shardws.server.stored",  # the mesh's confirmed stores
    "shardws.server.notices",  # the mesh's held notices
    "shardws.server.bridge",  # the mesh's cross-host process
    "shardws.server.redishub",  # the Redis hub's cross-host process
    "shardws.server.redisconn",  # the Redis engine's connections
    "shardws.server.redisengine",  # the Redis engine
    "shardws.server.redishistory",  # ... its history channels, decided in Redis
    "shardws.server.redispusher",  # ... its Pusher rosters, occupancy, cache
    "shardws.server.redispresence",  # the Redis engine's native presence
    "shardws.server.redisclusterhub",  # the Redis hub's cross-host process on a cluster
    "shardws.server.redisclustercalls",  # the Redis engine's calls on a cluster
    "shardws.server.crosshost",  # what the bridge and the hub share
    "shardws.bus.requests",  # asking members through their inboxes
}
#: Modules that a front's worker hands itself to through an interface they own
#: (``PusherHost``, ``OwnerHost``, ``PusherOwnerHost``, ``ConnectionHost``): they may not
#: name the worker, not even for types.
WORKER_FREE = ("shardws.server.pusher", "shardws.server.owners", "shardws.server.connection")


def runtime_imports(tree: ast.AST, module: str, types: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import not under ``if TYPE_CHECKING:``, and
    of those too with ``types``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if not types and isinstance(node, ast.If) and _is_type_checking(node):
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
        elif top == "redis" and module not in REDIS_USERS:
            wrong.append(f"line {line}: imports redis; only {sorted(REDIS_USERS)} may")
        elif layer == "pure" and top in IO_LIBRARIES:
            wrong.append(f"line {line}: the pure layer imports {imported} (I/O)")
    assert not wrong, f"{module}:\n" + "\n".join(wrong)


def test_every_layer_rule_is_used() -> None:
    """The tables name only packages and modules that exist (no stale rules)."""
    names = {module_name(p) for p in modules()} | {"shardws._core"}
    for prefix in LAYER_OF:
        assert any(n == prefix or n.startswith(prefix + ".") for n in names), prefix
    assert names >= ZMQ_USERS
    assert names >= REDIS_USERS


def test_the_checker_catches_a_forbidden_import() -> None:
    """The rule has teeth: a pure module importing the server, a socket or zmq fails."""
    tree = ast.parse("import socket\nfrom shardws.server import worker\nimport zmq.asyncio\n")
    imports = [name for _, name in runtime_imports(tree, "shardws.pure.example")]
    assert imports == ["socket", "shardws.server.worker", "zmq.asyncio"]
    assert layer_of("shardws.server.worker") not in ALLOWED["pure"]
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n")
    assert [name for _, name in runtime_imports(typed, "shardws.pure.example")] == ["typing"]


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the ``shardws`` modules it imports at module level, those under ``if
    TYPE_CHECKING:`` included (lazy imports inside functions excluded)."""
    graph: dict[str, set[str]] = {}
    for module, source in sources.items():
        tree = ast.parse(source)
        top_level = ast.Module(
            body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom | ast.If)],
            type_ignores=[],
        )
        imported = runtime_imports(top_level, module, types=True)
        graph[module] = {name for _, name in imported if name.startswith("shardws.")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated), or None."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt in graph and not state.get(nxt):
                cycle = walk(nxt)
                if cycle is not None:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            cycle = walk(node)
            if cycle is not None:
                return cycle
    return None


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports, those for types included, form no cycle: no loop of
    references between modules, not even one a reader must hold in their head because it
    hides under ``TYPE_CHECKING`` (lazy imports inside functions excluded)."""
    sources = {module_name(path): path.read_text() for path in modules()}
    cycle = find_cycle(import_graph(sources))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_loop_hidden_under_type_checking_is_a_cycle() -> None:
    """The cycle rule has teeth: the worker importing the Pusher front, which names the
    worker for types only, is the loop the engine seam removed."""
    sources = {
        "shardws.server.worker": "from shardws.server import pusher\n",
        "shardws.server.pusher": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from shardws.server.worker import Worker\n"
        ),
    }
    cycle = find_cycle(import_graph(sources))
    assert cycle == ["shardws.server.pusher", "shardws.server.worker", "shardws.server.pusher"]
    del sources["shardws.server.pusher"]
    assert find_cycle(import_graph(sources)) is None


def seam_violations(module: str, tree: ast.AST) -> list[str]:
    """What ``module`` imports (types included) against the engine seam's rules."""
    wrong = []
    for line, imported in runtime_imports(tree, module, types=True):
        if module in FRONTS and imported in BEHIND_THE_SEAM:
            wrong.append(f"line {line}: a front imports {imported}: use server.engine")
        if module.startswith(WORKER_FREE) and imported == "shardws.server.worker":
            wrong.append(f"line {line}: names the worker: take an interface it satisfies")
    return wrong


@pytest.mark.parametrize("path", modules(), ids=lambda p: module_name(p))
def test_fronts_reach_the_cluster_through_the_engine(path: Path) -> None:
    module = module_name(path)
    wrong = seam_violations(module, ast.parse(path.read_text(), str(path)))
    assert not wrong, f"{module}:\n" + "\n".join(wrong)


def test_the_seam_rule_counts_type_checking_imports() -> None:
    """A Pusher module naming the worker for types, or a front importing the owners for
    types, breaks the seam."""
    typed = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shardws.server.{} import X\n"
    )
    assert seam_violations("shardws.server.pusherowner", ast.parse(typed.format("worker")))
    assert seam_violations("shardws.server.admin", ast.parse(typed.format("owners")))
    assert not seam_violations("shardws.server.admin", ast.parse(typed.format("engine")))
    names = {module_name(p) for p in modules()}
    assert names >= FRONTS | BEHIND_THE_SEAM  # no stale rule
