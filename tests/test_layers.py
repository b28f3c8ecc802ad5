"""Imports point one way: a module never imports one of a higher layer, and no two import
each other (directly or round a loop), outside ``if TYPE_CHECKING:``.

The layer order is written once, in :data:`LAYERS`: from the foundation (files, config
schemas, the web's pages and actions) up to the entry modules. A package or module sits in
the first layer that names it or a package above it. Lazy imports inside functions count:
they are how a layer hides that it reaches up.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "websynthesis"

# Lowest first. Names within one layer may import each other, but never round a loop.
LAYERS: list[tuple[str, ...]] = [
    ("io", "config", "counters", "tracking"),  # files, schemas, counters, run tracking
    ("web",),  # pages, actions, action sets, tree deltas
    ("backends",),  # what answers a generation request: local model, servers, cache, batching
    ("roles",),  # prompts, grammars and parsers of the roles, and the client that asks them
    ("openai_api", "faults", "server"),  # the OpenAI protocol, HTTP server, its fault injector
    ("search",),  # the tree search, knowing nothing of the web
    ("data",),  # tasks, chat examples, transitions, episodes: records and their formats
    ("env",),  # live browsers
    ("synthesis",),  # search on the web: worlds (model, browser), policy, extraction, store
    ("training",),  # mixes, reward data, Lightning modules
    ("evaluation",),  # live episodes, fidelity, reward quality, WMLA
    ("evolution",),  # co-evolution's imagination
    ("pipelines",),  # what each entry point runs
    ("demo",),  # the demo run
]


def layer_of(module: str) -> int:
    """The layer index of ``websynthesis.<module>``: its first name decides."""
    head = module.split(".")[1] if "." in module else ""
    for index, names in enumerate(LAYERS):
        if head in names:
            return index
    raise AssertionError(f"{module}: in no layer of LAYERS (add it where it belongs)")


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> list[tuple[str, int]]:
    """The package modules ``path`` imports at run time (not under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, node.lineno) for name in names if name.startswith("websynthesis.")]
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import mod`` counts ``pkg.mod``)."""
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        for target, _ in imports(path):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def test_every_module_is_in_a_layer() -> None:
    for name in modules():
        if name != "websynthesis":
            layer_of(name)


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """``file:line: module -> target`` for every import of a higher layer."""
    known = modules(package)
    upward: list[str] = []
    for name, path in known.items():
        if name == "websynthesis":
            continue
        owners: dict[int, set[str]] = defaultdict(set)  # line -> the modules it imports
        for target, line in imports(path):
            owner = next((m for m in (target, target.rsplit(".", 1)[0]) if m in known), None)
            if owner and owner != "websynthesis":
                owners[line].add(owner)
        for line, found in sorted(owners.items()):
            # ``from pkg import mod`` names pkg and pkg.mod: the module is the one to report
            for owner in sorted(o for o in found if not any(f.startswith(o + ".") for f in found)):
                if layer_of(owner) > layer_of(name):
                    upward.append(f"{path.relative_to(package.parent)}:{line}: {name} -> {owner}")
    return upward


def test_no_module_imports_a_higher_layer() -> None:
    upward = upward_imports()
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_the_search_knows_nothing_of_the_web() -> None:
    """The search core (llm-reasoners' split: an algorithm, a world interface, a config)
    imports only itself: no pages, no browsers, no data formats, not even the file helpers."""
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
        for name, path in modules().items()
        if name.startswith("websynthesis.search")
        for target, line in imports(path)
        if not target.startswith("websynthesis.search")
    ]
    assert not outside, "the search core imports:\n" + "\n".join(sorted(set(outside)))


def test_no_import_cycles() -> None:
    edges = graph()
    cycles, state = [], {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_finds_an_upward_import_lazy_or_not(tmp_path: Path) -> None:
    """A web module reaching up to a pipeline is found, at module level and inside a
    function; one under ``TYPE_CHECKING`` and a downward one are not."""
    package = tmp_path / "websynthesis"
    for folder in ("web", "pipelines"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "pipelines" / "run.py").write_text("from websynthesis.web.page import Page\n")
    (package / "web" / "page.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from websynthesis.pipelines import run\n"
        "if TYPE_CHECKING:\n    from websynthesis.pipelines.run import Page\n"
        "def lazy():\n    from websynthesis.pipelines.run import Page\n"
    )
    found = upward_imports(package)
    assert found == [
        "websynthesis/web/page.py:2: websynthesis.web.page -> websynthesis.pipelines.run",
        "websynthesis/web/page.py:6: websynthesis.web.page -> websynthesis.pipelines.run",
    ]
