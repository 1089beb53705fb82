"""The package's shape: no import cycle (counting imports under TYPE_CHECKING and inside functions).

The layer contracts themselves are import-linter's (setup.cfg), run by `make test` before pytest.
"""

from __future__ import annotations

import grimp


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    imports = grimp.build_graph("wsgate", cache_dir=None)
    graph = {
        module: {
            other
            for other in imports.find_modules_directly_imported_by(module)
            if other.startswith("wsgate") and not (module == "wsgate" and other.startswith("wsgate."))
        }
        for module in imports.modules
    }  # (the package's __init__ importing its own submodules, to re-export them, is not a cycle)
    assert strongly_connected(graph) == []


def test_a_cycle_is_found() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
