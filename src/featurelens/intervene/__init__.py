"""Stage 6: change what a model computes — ablate, patch, add or clamp at any hook, and see what follows."""

from featurelens.intervene.context import (
    Intervention,
    Positions,
    generate_with_edits,
    intervening,
    run_with_edits,
)
from featurelens.intervene.edits import (
    Add,
    CallPositions,
    Edit,
    FeatureEdit,
    InterventionError,
    Mean,
    Patch,
    Resample,
    Zero,
    channels,
)
from featurelens.intervene.function_vectors import FunctionVectorReport, function_vector_experiment
from featurelens.intervene.heads import (
    attention_patterns,
    head_channels,
    head_contributions,
    head_layout,
    head_outputs,
)
from featurelens.intervene.steer import SweepRow, add_features, steering_sweep
from featurelens.intervene.vectors import SteeringVector, steering_vector

__all__ = [
    "Add",
    "CallPositions",
    "Edit",
    "FeatureEdit",
    "FunctionVectorReport",
    "Intervention",
    "InterventionError",
    "Mean",
    "Patch",
    "Positions",
    "Resample",
    "SteeringVector",
    "SweepRow",
    "Zero",
    "add_features",
    "attention_patterns",
    "channels",
    "function_vector_experiment",
    "generate_with_edits",
    "head_channels",
    "head_contributions",
    "head_layout",
    "head_outputs",
    "intervening",
    "run_with_edits",
    "steering_sweep",
    "steering_vector",
]
