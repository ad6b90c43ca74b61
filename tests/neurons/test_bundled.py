"""The neuron report on the bundled SmolLM2-135M (marked slow; CI runs it): its attention-sink rows are the
known answer for massive activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import featurelens as fl
from featurelens.neurons import NeuronJob, run_neuron_report

pytestmark = pytest.mark.slow
HOOK = "layers.15.resid_post"


def test_massive_activations_sit_at_the_channels_of_the_stores_outlier_rows(tmp_path: Path) -> None:
    config = fl.CaptureConfig(
        out=str(tmp_path / "acts"), hooks=(HOOK,), n_tokens=1024, skip_positions=0, keep_special=True
    )
    fl.run_capture(config)
    store = fl.ActivationStore.open(config.out)
    outliers = store.outlier_rows(HOOK)
    assert 0 in set(store.positions[outliers].tolist())  # the sinks: position 0 of the sequences
    acts = np.asarray(store.activations(HOOK))
    median = np.median(np.abs(acts))
    sink_channels = set(np.flatnonzero((np.abs(acts[outliers]) >= 100 * median).any(0)).tolist())
    assert sink_channels, "the outlier rows hold no entry 100x the median magnitude"

    report = run_neuron_report(NeuronJob(acts=config.out))
    massive = report.massive.to_pandas()
    assert set(massive["row"]) <= set(outliers.tolist())  # every massive entry lies in an outlier row
    assert set(massive["unit"]) == sink_channels
    assert 0 in set(massive["position"])
    units = report.units.to_pandas().set_index("unit")
    assert set(units.index[units["massive"]]) == sink_channels
    print(
        f"\n{HOOK}: massive channels {sorted(sink_channels)} at positions {sorted(set(massive['position']))}"
    )
