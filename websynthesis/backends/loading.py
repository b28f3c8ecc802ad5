"""Load a causal LM and its tokenizer for batched chat generation.

One place decides the things that silently break generation when wrong:
the attention kernel (flash-attn only where it can run), the dtype (bf16 on
GPU, fp32 on CPU, where bf16 matmuls are slow and fp16 is unsupported), left
padding (right padding gives wrong continuations in a batch), and a pad token
distinct from the end-of-turn token (training collators mask pad, so pad ==
eos teaches a model never to stop).

``model_path`` is a local directory, a Hub id (``Qwen/Qwen2.5-7B-Instruct``),
or the tiny test model: the bare name ``tiny``, or a cache folder named
``tiny`` without a ``config.json`` (``${paths.cache_dir}/tiny``, as
``conf/model/tiny.yaml`` writes it), which builds or reuses the seed-0 tiny
model there. LoRA adapters are loaded onto it frozen (:func:`with_adapters`) and known by
the digest of their files (:func:`adapter_digest`), not by their path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from websynthesis.backends.tiny import PAD, build_tiny_model

log = logging.getLogger(__name__)


def choose_attn_implementation(preferred: str = "auto") -> str:
    """``flash_attention_2`` when CUDA and the ``flash_attn`` package are there, else ``sdpa``.

    An explicit choice is kept, except ``flash_attention_2`` where it cannot
    load (transformers would raise ImportError): that falls back to ``sdpa``.
    """
    usable_fa2 = torch.cuda.is_available() and is_flash_attn_2_available()
    if preferred == "auto":
        return "flash_attention_2" if usable_fa2 else "sdpa"
    if preferred == "flash_attention_2" and not usable_fa2:
        log.warning("flash_attention_2 needs CUDA and the flash_attn package; using sdpa")
        return "sdpa"
    return preferred


def choose_device(device: str = "auto") -> torch.device:
    """``cuda`` when available under ``auto``, else ``cpu``; explicit names are kept."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def choose_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPU and fp32 on CPU; otherwise a torch dtype name (``float16``)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def resolve_model_path(model_path: str) -> str:
    """Map the tiny-model names (see the module docstring) to its built directory."""
    path = Path(model_path).expanduser()
    if model_path == "tiny":
        return str(build_tiny_model())
    if path.name == "tiny" and not (path / "config.json").is_file():
        return str(build_tiny_model(path.parent))
    return model_path


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    """The model's own tokenizer and chat template, left-padding, with pad != eos."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_path} has no chat template; a chat model is needed")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if PAD not in tokenizer.get_vocab():
            raise ValueError(f"{model_path}: no pad token distinct from eos, and no {PAD}")
        tokenizer.pad_token = PAD
    return tokenizer


def load_model(
    model_path: str,
    *,
    dtype: str = "auto",
    attn_implementation: str = "auto",
    device: str = "auto",
) -> PreTrainedModel:
    """The causal LM in eval mode on ``device``, with the chosen dtype and attention kernel."""
    target = choose_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        dtype=choose_dtype(dtype, target),
        attn_implementation=choose_attn_implementation(attn_implementation),
    )
    return model.to(target).eval()


def adapter_digest(path: str | Path) -> str:
    """SHA-256 of a PEFT adapter directory's files (config and weights), names included;
    a Hub id (no such directory) stands for itself."""
    if not Path(path).is_dir():
        return str(path)
    digest = hashlib.sha256()
    for file in sorted(Path(path).iterdir()):
        if file.is_file() and file.name.startswith("adapter_"):
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def with_adapters(
    model: PreTrainedModel, adapters: Mapping[str, str]
) -> PreTrainedModel | PeftModel:
    """Wrap ``model`` with every adapter loaded (frozen, in the base dtype), or return it bare."""
    if not adapters:
        return model
    (first, path), *rest = adapters.items()
    wrapped = PeftModel.from_pretrained(
        model, path, adapter_name=first, autocast_adapter_dtype=False
    )
    for name, adapter_path in rest:
        wrapped.load_adapter(adapter_path, adapter_name=name, autocast_adapter_dtype=False)
    return wrapped.eval()
