"""Reading the compiled pipeline IR (the committed pipelines/*.yaml) in tests."""

from __future__ import annotations


def container_tasks(pipeline: dict) -> list[tuple[str, dict]]:
    """(key, task) of every step (a container), in the root DAG and in every nested DAG (the crop
    branches and the optional promotion's conditions, ParallelFor bodies)."""
    found = []

    def walk(tasks):
        for key, task in tasks.items():
            component = pipeline["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"]["tasks"])
            else:
                found.append((key, task))

    walk(pipeline["root"]["dag"]["tasks"])
    return found
