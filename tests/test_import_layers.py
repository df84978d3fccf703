"""The package's rooms import each other in one direction only (DESIGN.md: arrows point down).

Every `import` and `from ... import` in every module counts, those inside functions too: a cycle
through a function-level import is still a cycle of ideas, only hidden from Python's loader. A
room is a subpackage (`latentforge/eval/`) or a top-level module (`latentforge/cli.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import latentforge

PACKAGE = Path(latentforge.__file__).parent


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "latentforge" or len(parts) < 2:
        return None
    return parts[1]


def room_graph() -> dict[str, dict[str, list[str]]]:
    """room -> {imported room -> [files that import it]}."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        src = _room(module) if module != "latentforge" else None
        if src is None:
            continue
        edges = graph.setdefault(src, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + ([f"{node.module}.{a.name}" for a in node.names]
                                           if node.module == "latentforge" else [])
            for target in targets:
                dst = _room(target)
                if dst is not None and dst != src:
                    edges.setdefault(dst, []).append(str(path.relative_to(PACKAGE)))
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(room: str) -> list[str] | None:
        state[room] = 1
        stack.append(room)
        for nxt in sorted(graph.get(room, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[room] = 2
        return None

    for room in sorted(graph):
        if room not in state:
            found = visit(room)
            if found:
                return found
    return None


def test_no_import_cycle_between_rooms():
    graph = room_graph()
    cycle = find_cycle(graph)
    if cycle:
        hops = [f"{a} -> {b} (in {', '.join(sorted(set(graph[a][b]))[:3])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle between rooms:\n  " + "\n  ".join(hops))


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b": ["a.py"]}, "b": {"c": ["b.py"]}, "c": {"a": ["c.py"]}, "d": {"a": ["d.py"]}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": []}, "b": {}}) is None
