"""Which page of the served atlas shows a unit of the model: shared by the circuit, neuron and probe views."""

from __future__ import annotations

from typing import Any

ATLAS_KIND = {"feature": "dictionary", "neuron": "neurons"}  # unit kind -> the atlas kind that maps it


def atlas_page(kind: str, hook: str, index: int, atlas_meta: dict[str, Any]) -> int | None:
    """The feature id that shows unit ``index`` of ``hook`` in the atlas described by ``atlas_meta``, if any.

    A dictionary feature has a page in an atlas of its dictionary (atlas kind ``dictionary``) at its hook;
    a neuron (a channel of any hook) in a neuron atlas (atlas kind ``neurons``) of the same hook. The page's
    id is the index itself, when below the atlas's ``d_latent``. Other kinds (heads) have no page.
    """
    if ATLAS_KIND.get(kind) != atlas_meta["kind"] or hook != atlas_meta["hook_in"]:
        return None
    return int(index) if 0 <= index < int(atlas_meta["d_latent"]) else None
