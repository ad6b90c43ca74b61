"""Stage 7, neurons: one streaming pass of per-unit statistics over any hook points, and its report.

>>> from featurelens.neurons import NeuronJob, run_neuron_report, save_report
>>> report = run_neuron_report(NeuronJob(hooks=("layers.*.mlp_neurons",), tokens=20_000))
>>> report.layers.to_pandas()          # layer x statistic
>>> save_report(report, "runs/neurons") # Parquet tables, plots, report.html
"""

from featurelens.neurons.output import load_report, notable_units, save_report
from featurelens.neurons.report import (
    DEFAULT_HOOKS,
    NeuronJob,
    NeuronReport,
    report_from_rows,
    run_neuron_report,
)
from featurelens.neurons.statistics import NeuronSettings, UnitStatistics

__all__ = [
    "DEFAULT_HOOKS",
    "NeuronJob",
    "NeuronReport",
    "NeuronSettings",
    "UnitStatistics",
    "load_report",
    "notable_units",
    "report_from_rows",
    "run_neuron_report",
    "save_report",
]
