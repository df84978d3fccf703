"""A scene graph built from menus, for runs whose condition is a Shapes scene graph.

The page shows one row of menus per object (shape, colour, size) and one per relation (object
number, predicate, object number); "use this graph" writes the graph's JSON into the condition
box, where it is checked like any condition (`SceneGraph.from_json`, through the data set). The
rows start from the first validation graph. Object numbers are row numbers, counted from 1.
"""

from __future__ import annotations

import json
from typing import Any

from latentforge.data.shapes import COLORS, MAX_OBJECTS, PREDICATES, SHAPES, SIZES

NONE = "-"               # an unused row's menus
RELATION_ROWS = 4


def graph_from_rows(objects: list[tuple[str, str, str]], relations: list[tuple[str, str, str]]) -> dict[str, Any]:
    """Menu rows -> scene graph JSON. An object row is used when its shape is set (then its colour
    and size must be); a relation row when any of its menus is set (then all must be, naming used
    object rows). Raises ValueError naming the row."""
    kept: dict[int, int] = {}   # row number -> index in the graph's objects
    out_objects = []
    for row, (shape, color, size) in enumerate(objects, start=1):
        if shape == NONE:
            if color != NONE or size != NONE:
                raise ValueError(f"object {row}: pick its shape too (or clear the row)")
            continue
        if NONE in (color, size):
            raise ValueError(f"object {row}: pick its colour and size")
        kept[row] = len(out_objects)
        out_objects.append({"shape": shape, "color": color, "size": size})
    if not out_objects:
        raise ValueError("the graph has no objects: pick a shape, colour and size in the first row")
    out_relations = []
    for row, (subject, predicate, obj) in enumerate(relations, start=1):
        if (subject, predicate, obj) == (NONE, NONE, NONE):
            continue
        if NONE in (subject, predicate, obj):
            raise ValueError(f"relation {row}: pick both objects and the predicate (or clear the row)")
        missing = [int(k) for k in (subject, obj) if int(k) not in kept]
        if missing:
            raise ValueError(f"relation {row}: object {missing[0]} has no shape")
        out_relations.append([kept[int(subject)], predicate, kept[int(obj)]])
    return {"objects": out_objects, "relations": out_relations}


def rows_from_graph(graph: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Scene graph JSON -> the menus' values (MAX_OBJECTS object rows, RELATION_ROWS relation rows);
    relations past the last row are dropped."""
    objects = [(o["shape"], o["color"], o["size"]) for o in graph["objects"][:MAX_OBJECTS]]
    objects += [(NONE, NONE, NONE)] * (MAX_OBJECTS - len(objects))
    relations = [(str(s + 1), p, str(o + 1)) for s, p, o in graph.get("relations", [])[:RELATION_ROWS]]
    relations += [(NONE, NONE, NONE)] * (RELATION_ROWS - len(relations))
    return objects, relations


def add_builder(gr: Any, condition: Any, start: dict[str, Any] | None) -> Any:
    """The builder's menus inside the current Blocks context, writing into the `condition` box;
    returns its button."""
    objects, relations = rows_from_graph(start or {"objects": []})
    numbers = [NONE, *(str(i) for i in range(1, MAX_OBJECTS + 1))]
    menus: list[Any] = []
    with gr.Accordion("build a scene graph", open=False, elem_id="builder"):
        for row, values in enumerate(objects, start=1):
            with gr.Row():
                for name, choices, value in zip(("shape", "colour", "size"), (SHAPES, tuple(COLORS), SIZES), values):
                    menus.append(gr.Dropdown([NONE, *choices], value=value, label=f"object {row} {name}",
                                             min_width=80, elem_id=f"object{row}_{name}"))
        for row, values in enumerate(relations, start=1):
            with gr.Row():
                for name, choices, value in zip(("subject", "predicate", "object"), (numbers, (NONE, *PREDICATES),
                                                                                      numbers), values):
                    menus.append(gr.Dropdown(list(choices), value=value, label=f"relation {row} {name}",
                                             min_width=80, elem_id=f"relation{row}_{name}"))
        button = gr.Button("use this graph", elem_id="use_graph")

    def write(*values: str) -> Any:
        rows = [tuple(values[i:i + 3]) for i in range(0, len(values), 3)]  # the menus, three a row
        try:
            graph = graph_from_rows(rows[:MAX_OBJECTS], rows[MAX_OBJECTS:])
        except ValueError as err:
            gr.Warning(str(err))
            return gr.update()  # the condition box keeps what it holds
        return json.dumps(graph)

    button.click(write, menus, condition)
    return button
