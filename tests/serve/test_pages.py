"""Which atlas page shows a unit: known answers for the link rule the circuit and neuron views share."""

from __future__ import annotations

from featurelens.serve.pages import atlas_page

NEURON_ATLAS = {"kind": "neurons", "hook_in": "layers.1.mlp_neurons", "d_latent": 64}
DICTIONARY_ATLAS = {"kind": "dictionary", "hook_in": "layers.1.mlp_neurons", "d_latent": 512}


def test_a_neuron_has_a_page_only_in_a_neuron_atlas_of_its_hook() -> None:
    assert atlas_page("neuron", "layers.1.mlp_neurons", 7, NEURON_ATLAS) == 7
    assert atlas_page("neuron", "layers.1.mlp_neurons", 63, NEURON_ATLAS) == 63
    assert atlas_page("neuron", "layers.1.mlp_neurons", 64, NEURON_ATLAS) is None  # beyond d_latent
    assert atlas_page("neuron", "layers.2.mlp_neurons", 7, NEURON_ATLAS) is None
    assert atlas_page("neuron", "layers.1.mlp_neurons", 7, DICTIONARY_ATLAS) is None  # feature 7 is not it


def test_a_feature_has_a_page_only_in_its_dictionary_atlas_and_a_head_never() -> None:
    assert atlas_page("feature", "layers.1.mlp_neurons", 300, DICTIONARY_ATLAS) == 300
    assert atlas_page("feature", "layers.1.mlp_neurons", 3, NEURON_ATLAS) is None
    assert atlas_page("feature", "layers.0.mlp_neurons", 3, DICTIONARY_ATLAS) is None
    assert atlas_page("head", "layers.1.attn_heads", 3, NEURON_ATLAS) is None
