"""Stage 6: change what a model computes — add or clamp features at their hook and see what follows."""

from featurelens.intervene.steer import SteeringError, add_edit, clamp_edit, generate

__all__ = ["SteeringError", "add_edit", "clamp_edit", "generate"]
