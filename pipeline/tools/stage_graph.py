"""The pipeline's stages as the parallel executor dispatches them: each with the stages whose outputs it reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx

if TYPE_CHECKING:
    from dvc.repo import Repo


def dependencies(repo: Repo) -> dict[str, set[str]]:
    """Stage name -> the names of the stages whose outputs it reads."""
    graph = repo.index.graph
    return {stage.name: {upstream.name for upstream in graph.successors(stage)} for stage in graph.nodes}


def needed_for(upstream: dict[str, set[str]], targets: list[str]) -> dict[str, set[str]]:
    """The stages the targets need (each target with every stage upstream of it), in dvc.yaml's order, first those
    of the first target: one job runs the targets one after another, each as soon as it can. A target is a stage
    name or, as for `dvc repro`, a matrix stage's name for all of its items (`train`). No targets: every stage."""
    if not targets:
        return upstream
    graph = nx.DiGraph(upstream)  # edges point upstream
    first_needed_by: dict[str, int] = {}
    for rank, target in enumerate(targets):
        matches = [name for name in upstream if name == target or name.startswith(f"{target}@")]
        if not matches:
            groups = dict.fromkeys(name.split("@")[0] + ("@…" if "@" in name else "") for name in upstream)
            raise ValueError(f"no stage {target!r} in dvc.yaml (its stages: {', '.join(groups)})")
        for name in matches:
            for needed in {name} | nx.descendants(graph, name):
                first_needed_by.setdefault(needed, rank)
    position = {name: index for index, name in enumerate(upstream)}
    order = sorted(first_needed_by, key=lambda name: (first_needed_by[name], position[name]))
    return {name: upstream[name] for name in order}
