"""The layout holds: no import cycles, ``import dee`` stays light, the workflow loads no
channel client, and no module outgrows the split point. The layers themselves are checked
by ``lint-imports`` (the contract in ``pyproject.toml``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dee", "workflows", "activities")
#: What ``import dee`` must not load: a web framework, an ASGI server, a SQL toolkit or a
#: channel's client.
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "aiosmtplib",
    "aiosmtpd",
    "twilio",
)
MAX_MODULE_LINES = 500


def _cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing
    itself), by Tarjan's algorithm, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        found.append(sorted(component))
    return found


def _import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph(*PACKAGES)
    return {
        module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules
    }


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        # a chain has no cycle
        ({"a": {"b"}, "b": {"c"}}, []),
        # two modules importing each other
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        # a longer loop beside a module outside it
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        # a module importing itself
        ({"a": {"a"}}, [["a"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert _cycles(graph) == expected


def test_no_module_imports_itself_round_a_loop() -> None:
    graph = _import_graph()
    # Positive control: the graph is the real one, with the edges the layers are made of.
    assert "dee.runs.model" in graph["workflows.execution_plan"]
    assert "dee.server.state" in graph["dee.server.app"]
    assert _cycles(graph) == []


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    script = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {name.split(".")[0] for name in output.split()}


def test_import_dee_loads_no_web_sql_or_channel_stack() -> None:
    loaded = _loaded_after("import dee")
    assert "dee" in loaded and "pydantic" in loaded
    assert sorted(loaded & set(HEAVY)) == []
    # Positive control: the same check sees the stack once a heavy name is used.
    assert {"fastapi", "sqlalchemy"} <= _loaded_after("import dee; dee.create_app")


def test_the_workflow_loads_models_not_channel_clients() -> None:
    loaded = _loaded_after("import workflows.execution_plan")
    assert "temporalio" in loaded
    assert sorted(loaded & {"aiosmtplib", "twilio", "sqlalchemy", "activities"}) == []


def test_no_module_is_over_the_split_point() -> None:
    sources = [ROOT / "worker.py"]
    for package in PACKAGES:
        sources.extend((ROOT / package).rglob("*.py"))
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in sources}
    assert len(sizes) > 40
    assert {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}
