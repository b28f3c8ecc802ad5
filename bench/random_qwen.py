"""Randomly initialised Qwen2.5-7B-architecture models for the GPU benches, and their
shrunken twin for checking those benches on a CPU (``--shrunk``): the same code path, the
same vocabulary (the tiny tokenizer's ids are all inside Qwen's), a few million weights."""

from __future__ import annotations

import torch

# Qwen/Qwen2.5-7B-Instruct's config.json, shapes only.
QWEN25_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
SHRUNK = QWEN25_7B | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def shapes(shrunk: bool) -> dict[str, object]:
    return dict(SHRUNK if shrunk else QWEN25_7B)


def device(shrunk: bool) -> torch.device:
    """CUDA; the CPU only for the shrunken shapes (a 7B model there is no measurement)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not shrunk:
        raise SystemExit("no CUDA device: the 7B benches need a GPU (--shrunk checks them on CPU)")
    return torch.device("cpu")


def synchronize(where: torch.device) -> None:
    if where.type == "cuda":
        torch.cuda.synchronize()
