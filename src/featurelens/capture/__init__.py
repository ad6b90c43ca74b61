"""Stage 1: capture activations into a sharded, resumable, memory-mapped store."""

from featurelens.capture.run import CaptureConfig, CaptureResult, run_capture
from featurelens.capture.store import ActivationStore, ShardedArray

__all__ = ["ActivationStore", "CaptureConfig", "CaptureResult", "ShardedArray", "run_capture"]
