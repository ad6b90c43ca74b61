"""Corpus tests never reach the Hugging Face hub, even when a bug routes a local spec there."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, at import, so patch their constants too.

    Setting only the environment variable is ignored once ``datasets`` has been imported, and then a
    missing dataset costs ~23 s of retries (5 with backoff) per lookup where no network is reachable.
    """
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
