"""The atlas's model and dictionary, loaded on first use, for "try your own text" and steering."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from featurelens.dictionaries.base import Dictionary
from featurelens.dictionaries.identity import IdentityDictionary
from featurelens.errors import FeatureLensError
from featurelens.intervene import Edit, FeatureEdit, add_features, generate_with_edits
from featurelens.models import LanguageModel, load_model


class ModelBusy(FeatureLensError):
    """The model is being loaded by another request."""


@dataclass(frozen=True)
class FeatureActivation:
    id: int
    activation: float


@dataclass(frozen=True)
class TokenFeatures:
    """One token of the text and its strongest features (none for a norm outlier: an attention sink)."""

    text: str
    outlier: bool
    features: list[FeatureActivation]


@dataclass(frozen=True)
class Steering:
    prompt: str
    baseline: str
    steered: str


class LiveModel:
    """Loads the model and dictionary an atlas was built from, once, when first needed (thread-safe).

    While one request loads them, others get :class:`ModelBusy` instead of waiting. Once loaded, requests
    take turns (``_use``): a steering edit hooks the model, and must not leak into a concurrent request.
    """

    def __init__(self, meta: dict[str, Any], *, model: str | None = None, device: str | None = None) -> None:
        self.meta = meta
        self.model_spec = model or str(meta["model"])
        self.device = device
        self.state: Literal["idle", "loading", "ready", "failed"] = "idle"
        self.error = ""
        self._lock = threading.Lock()
        self._use = threading.Lock()
        self._loaded: tuple[LanguageModel, Dictionary] | None = None

    def _load(self) -> tuple[LanguageModel, Dictionary]:
        lm = load_model(self.model_spec, device=self.device)
        if self.meta["kind"] == "neurons":
            dictionary: Dictionary = IdentityDictionary(int(self.meta["d_latent"]), str(self.meta["hook_in"]))
        else:
            dictionary = Dictionary.load(Path(self.meta["dictionary"]))
        return lm, dictionary.to(lm.device).eval()

    def get(self) -> tuple[LanguageModel, Dictionary]:
        """The loaded pair; loads it if nobody has, raises :class:`ModelBusy` if someone is loading it."""
        if self._loaded is not None:
            return self._loaded
        if not self._lock.acquire(blocking=False):
            raise ModelBusy("the model is loading; retry in a few seconds")
        try:
            if self._loaded is None:
                self.state = "loading"
                try:
                    self._loaded = self._load()
                except FeatureLensError as error:
                    self.state, self.error = "failed", str(error)
                    raise
                self.state = "ready"
            return self._loaded
        finally:
            self._lock.release()

    @torch.no_grad()
    def activations(self, text: str, top_n: int) -> list[TokenFeatures]:
        """Each token of ``text`` with its ``top_n`` most active features (activation > 0)."""
        lm, dictionary = self.get()
        ids = lm.tokenizer(text, return_tensors="pt")["input_ids"][:, :1024]
        with self._use:
            acts = lm.capture(ids, [dictionary.hook_in])[dictionary.hook_in][0].float()
        codes = dictionary.encode(acts.to(next(dictionary.parameters()).device)).cpu()
        max_norm = self.meta.get("max_norm")
        outliers = acts.norm(dim=1).cpu() > max_norm if max_norm else torch.zeros(len(acts), dtype=torch.bool)
        values, latents = codes.topk(min(top_n, codes.shape[1]), dim=1)
        texts = lm.tokenizer.batch_decode([[i] for i in ids[0].tolist()])
        return [
            TokenFeatures(
                text,
                bool(outlier),
                []
                if outlier
                else [
                    FeatureActivation(int(f), float(v))
                    for v, f in zip(row_values, row_latents, strict=True)
                    if v > 0
                ],
            )
            for text, outlier, row_values, row_latents in zip(
                texts, outliers.tolist(), values.tolist(), latents.tolist(), strict=True
            )
        ]

    def steer(self, prompt: str, strengths: dict[int, float], mode: str, max_new_tokens: int) -> Steering:
        """Greedy continuations of ``prompt`` without and with the features edited (see
        :mod:`featurelens.intervene.steer`)."""
        lm, dictionary = self.get()
        ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"][:, :1024]
        edits: dict[str, Edit]
        if mode == "add":
            edits = {dictionary.hook_out: add_features(dictionary, strengths)}
        else:
            edits = {dictionary.hook_in: FeatureEdit(dictionary, clamp=strengths)}
        with self._use:
            baseline = generate_with_edits(lm, ids, max_new_tokens)
            steered = generate_with_edits(lm, ids, max_new_tokens, edits)
        start = ids.shape[1]
        decode = lm.tokenizer.decode
        return Steering(
            prompt,
            decode(baseline[0, start:], skip_special_tokens=True),
            decode(steered[0, start:], skip_special_tokens=True),
        )
