"""The tiny random Qwen2 model: deterministic, cached, atomic, and a faithful Qwen stand-in."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from websynthesis.backends import tiny
from websynthesis.backends.tiny import IM_END, PAD, build_tiny_model


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=3)
    second = build_tiny_model(tmp_path / "b", seed=3)
    assert first.name == second.name
    assert _files(first) == _files(second)
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    } <= set(_files(first))


def test_other_seed_changes_weights_not_tokenizer(tmp_path: Path) -> None:
    zero = build_tiny_model(tmp_path, seed=0)
    one = build_tiny_model(tmp_path, seed=1)
    assert zero != one
    assert (zero / "tokenizer.json").read_bytes() == (one / "tokenizer.json").read_bytes()
    weights_zero = load_file(zero / "model.safetensors")
    weights_one = load_file(one / "model.safetensors")
    assert any(not weights_zero[k].equal(weights_one[k]) for k in weights_zero)


def test_second_build_is_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_tiny_model(tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def must_not_build(*args: object) -> None:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(tiny, "_write_model", must_not_build)
    assert build_tiny_model(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_cache_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSYNTHESIS_CACHE", str(tmp_path))
    path = build_tiny_model()
    assert path.parent == tmp_path / "tiny"


def test_concurrent_builders_agree_and_leave_no_temporaries(tmp_path: Path) -> None:
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(build_tiny_model(tmp_path))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 1 and len(paths) == 3
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [paths[0].name]


def test_loads_as_a_qwen_chat_model(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2"
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 5_000_000
    assert len(tokenizer) <= model.config.vocab_size
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(IM_END)
    assert "chat_template" in json.loads((path / "tokenizer_config.json").read_text())

    messages = [
        {"role": "user", "content": "Click the button."},
        {"role": "assistant", "content": "click [12]"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nClick the button.<|im_end|>\n"
        "<|im_start|>assistant\nclick [12]<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    encoded = tokenizer.apply_chat_template(
        messages, return_dict=True, return_assistant_tokens_mask=True
    )
    answer = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(answer) == "click [12]<|im_end|>"
    assert tokenizer.decode(tokenizer("héllo ```wörld```")["input_ids"]) == "héllo ```wörld```"
