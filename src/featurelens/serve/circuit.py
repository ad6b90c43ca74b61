"""The circuit view's data: a ``circuit.json`` (from `featurelens circuit`) as typed API models, each node
linked to its page in the served atlas when the atlas maps that node (a feature of the atlas's dictionary,
or a neuron of a neuron atlas of the same layer)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from featurelens.serve.pages import atlas_page


class CircuitNode(BaseModel):
    id: str
    kind: str  # head, neuron or feature
    layer: int
    index: int
    hook: str
    exact_effect: float | None
    attribution_effect: float | None
    page: int | None  # feature id of this node in the served atlas, when it has one


class CircuitEdge(BaseModel):
    source: str
    target: str  # a node id, or "logits"
    weight: float  # exact: the share of the target's change (or, into logits, the node's effect)
    attribution: float | None = None  # edge attribution: the share of the metric's gap along the edge


class CircuitView(BaseModel):
    model: str
    task: str
    metric: str
    prompts: int
    clean_metric: float
    corrupt_metric: float
    faithfulness: dict[str, float]
    faithfulness_by_heads: list[dict[str, float]]
    head_rank_correlation: float | None
    rank_correlations: dict[str, float] = Field(default_factory=dict)  # per kind: attribution vs exact
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    example: dict[str, str]
    atlas_hook: str


def circuit_view(graph: dict[str, Any], atlas_meta: dict[str, Any]) -> CircuitView:
    nodes = [
        CircuitNode(**node, page=atlas_page(node["kind"], node["hook"], node["index"], atlas_meta))
        for node in graph["nodes"]
    ]
    names = [name for name in CircuitView.model_fields if name not in ("nodes", "atlas_hook")]
    fields = {name: graph[name] for name in names if name in graph}  # older files lack the newer fields
    return CircuitView(**fields, nodes=nodes, atlas_hook=atlas_meta["hook_in"])
