"""A tiny llama with a hand-set circuit, for patching and circuit tests.

Tokens: 0-5 and 11-15 fillers, 6 = A, 7 = B, 8 = A* (marked A), 9 = B* (marked B), 10 = Q (query). At Q the
model must say A if the prompt holds A*, B if it holds B*. The planted path:

* layer 0 head 0 attends from Q to the marked token (query reads "is Q", key reads "is marked") and copies
  its sign (+1 for A*, -1 for B*) into residual channel 10;
* layer 0 MLP neuron 5 is gated by "is Q" and multiplies channel 10 into channel 11;
* the unembedding reads channel 11: logit(A) = +2 x[11], logit(B) = -2 x[11].

Every other weight is small and random, so every other head and neuron matters little. Embeddings have
RMS 1, so the RMSNorms leave them unchanged; RoPE's theta is so large that only head dims 0 and 4 rotate,
and the path avoids them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import featurelens as fl

A, B, A_MARKED, B_MARKED, QUERY = 6, 7, 8, 9, 10
FILLERS = [0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15]
IS_MARKED, SIGN, IS_QUERY, COPIED, GATED = 1, 2, 3, 10, 11
HEAD, NEURON = 0, 5


def planted_model(seed: int = 0, noise: float = 0.05) -> fl.LanguageModel:
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rope_theta=1e30,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, noise)
        embed = model.model.embed_tokens.weight
        embed.zero_()
        filler = torch.randn(16, 16)
        designed = torch.zeros(16, 16)
        designed[[A_MARKED, B_MARKED], IS_MARKED] = 1.0
        designed[A_MARKED, SIGN], designed[B_MARKED, SIGN] = 1.0, -1.0
        designed[QUERY, IS_QUERY] = 1.0
        room = (32 - designed.pow(2).sum(1, keepdim=True)).sqrt()
        embed[:, :16] = designed
        embed[:, 16:] = filler / filler.norm(dim=1, keepdim=True) * room  # every row has RMS exactly 1

        attention = model.model.layers[0].self_attn
        head = slice(HEAD * 8, HEAD * 8 + 8)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.weight[head] = 0.0
        attention.q_proj.weight[HEAD * 8 + 1, IS_QUERY] = 6.0
        attention.k_proj.weight[HEAD * 8 + 1, IS_MARKED] = 6.0
        attention.v_proj.weight[HEAD * 8 + 2, SIGN] = 1.0
        attention.o_proj.weight[:, head] = 0.0
        attention.o_proj.weight[COPIED, HEAD * 8 + 2] = 1.0

        mlp = model.model.layers[0].mlp
        mlp.gate_proj.weight[NEURON] = 0.0
        mlp.up_proj.weight[NEURON] = 0.0
        mlp.down_proj.weight[:, NEURON] = 0.0
        mlp.gate_proj.weight[NEURON, IS_QUERY] = 4.0
        mlp.up_proj.weight[NEURON, COPIED] = 1.0
        mlp.down_proj.weight[GATED, NEURON] = 1.0

        unembed = model.lm_head.weight
        unembed[[A, B]] = 0.0
        unembed[A, GATED], unembed[B, GATED] = 2.0, -2.0
    return fl.LanguageModel(model, None, spec="planted")


def planted_prompts(
    n: int = 8, seq: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Aligned clean and corrupted prompts [n, seq] and the clean answer [n]: half hold A*, half B* (the
    corrupted prompt holds the other), at varying positions; the last token is Q."""
    generator = torch.Generator().manual_seed(seed)
    fillers = torch.tensor(FILLERS)
    clean = fillers[torch.randint(len(FILLERS), (n, seq), generator=generator)]
    clean[:, -1] = QUERY
    corrupt = clean.clone()
    answers = torch.empty(n, dtype=torch.long)
    for i in range(n):
        position = 1 + i % (seq - 2)
        marked, other = (A_MARKED, B_MARKED) if i % 2 == 0 else (B_MARKED, A_MARKED)
        clean[i, position], corrupt[i, position] = marked, other
        answers[i] = A if marked == A_MARKED else B
    return clean, corrupt, answers


WORDS = [f"w{i}" for i in range(16)]
WORDS[A], WORDS[B], WORDS[A_MARKED], WORDS[B_MARKED], WORDS[QUERY] = "A", "B", "A*", "B*", "Q"


def save_planted(folder: Path) -> Path:
    """The planted model as a user's model folder, with a word-level tokenizer (one word = one token id),
    and ``prompts.jsonl`` holding its task as text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    planted_model().model.save_pretrained(folder)
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0").save_pretrained(folder)
    clean, corrupt, answers = planted_prompts()
    with (folder / "prompts.jsonl").open("w") as file:
        for row in range(len(clean)):
            correct = int(answers[row])
            record = {
                "clean": " ".join(WORDS[t] for t in clean[row]),
                "corrupt": " ".join(WORDS[t] for t in corrupt[row]),
                "correct": f" {WORDS[correct]}",
                "wrong": f" {WORDS[B if correct == A else A]}",
            }
            file.write(json.dumps(record) + "\n")
    return folder
