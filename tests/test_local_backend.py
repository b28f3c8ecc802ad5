"""LocalBackend on the tiny model: batching, padding, adapters, shared prefill, seeds, errors."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from websynthesis.backends.cache import CachedBackend
from websynthesis.backends.loading import (
    adapter_digest,
    choose_attn_implementation,
    resolve_model_path,
)
from websynthesis.backends.local import LocalBackend
from websynthesis.backends.sampling import SeededSampler
from websynthesis.backends.types import (
    Backend,
    Generation,
    GenerationRequest,
    Sampling,
    derive_seed,
    generate,
)
from websynthesis.roles.grammar import action_grammar

PROMPTS = [
    "Hi.",
    "Click the search box and type the product name.",
    "What is the price of the HP Inkjet Fax Machine? Look at the product page and answer "
    "with the exact price shown, including the currency sign.",
    "Go back.",
]


@pytest.fixture(scope="module")
def tiny_path(tiny_model_path: Path) -> Path:
    return tiny_model_path


# The backends that tests compare path against path (batched against one by one, shared
# prefix against unshared) run in float64: in float32 the paths take kernels whose rounding
# differs by ~1e-6 and depends on the CPU (AVX2, AVX-512, AMX), enough to flip a near-tied
# greedy token on some machine; in float64 a tie would need logits equal to ~1e-15.
@pytest.fixture(scope="module")
def backend(tiny_path: Path) -> LocalBackend:
    return LocalBackend(str(tiny_path), dtype="float64")


@pytest.fixture(scope="module")
def lora_backend(tiny_path: Path, adapters: dict[str, str]) -> LocalBackend:
    return LocalBackend(str(tiny_path), adapters={**adapters, "untrained": None}, dtype="float64")


def ask(text: str, model: str | None = None, grammar: str | None = None, **sampling: object):
    sampling.setdefault("max_new_tokens", 8)
    return GenerationRequest(
        messages=({"role": "user", "content": text},),
        sampling=Sampling(**sampling),  # type: ignore[arg-type]
        model=model,
        grammar=grammar,
    )


def texts(results: list[Generation]) -> list[list[str]]:
    assert all(r.ok for r in results), [r.error for r in results]
    return [r.texts for r in results]


def test_is_a_backend(backend: LocalBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.tokenizer.padding_side == "left"
    assert backend.tokenizer.pad_token_id != backend.tokenizer.eos_token_id
    assert backend.cache_identity["kind"] == "local"


def test_an_adapter_retrained_in_place_is_not_answered_from_the_cache(
    tiny_path: Path, adapters: dict[str, str], tmp_path: Path
) -> None:
    here = tmp_path / "policy"
    shutil.copytree(adapters["policy"], here)
    request = ask("Hi.", model="policy", temperature=1.0, seed=3)

    def answer(adapter: Path) -> Generation:
        local = LocalBackend(str(tiny_path), adapters={"policy": str(adapter)})
        return generate(CachedBackend(local, tmp_path / "cache.sqlite"), [request])[0]

    first = answer(here)
    assert not first.cached
    assert answer(here).cached  # the same weights: replayed
    moved = tmp_path / "elsewhere"
    shutil.copytree(here, moved)
    assert answer(moved).cached  # the same weights under another path: replayed too
    shutil.rmtree(here)
    shutil.copytree(adapters["world_model"], here)  # retrained where the old one was
    assert adapter_digest(here) != adapter_digest(moved)
    assert not answer(here).cached


def test_loading_choices_on_cpu(tiny_path: Path) -> None:
    if not torch.cuda.is_available():
        assert choose_attn_implementation() == "sdpa"
        assert choose_attn_implementation("flash_attention_2") == "sdpa"
    assert choose_attn_implementation("eager") == "eager"
    assert resolve_model_path(str(tiny_path)) == str(tiny_path)
    assert resolve_model_path(str(tiny_path.parent)) == str(tiny_path)  # <cache>/tiny


def test_batched_greedy_equals_one_by_one(backend: LocalBackend) -> None:
    requests = [ask(p) for p in PROMPTS]
    batched = texts(generate(backend, requests))
    alone = [texts(generate(backend, [r]))[0] for r in requests]
    assert batched == alone
    assert len({t[0] for t in batched}) == len(PROMPTS)  # the prompts really differ


def test_greedy_equals_plain_transformers_generate(backend: LocalBackend, tiny_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[1]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert texts(generate(backend, [ask(PROMPTS[1])])) == [[expected]]


def test_max_batch_size_splits_without_changing_outputs(tiny_path: Path) -> None:
    small = LocalBackend(str(tiny_path), max_batch_size=2)
    requests = [ask(p) for p in PROMPTS[:3]]
    results = generate(small, requests)
    assert small.stats.generate_calls == 2
    assert texts(results) == [texts(generate(small, [r]))[0] for r in requests]


def test_n_samples_share_one_prefill(backend: LocalBackend) -> None:
    shapes: list[tuple[int, int]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    handle = backend.model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = generate(backend, [ask(PROMPTS[2], temperature=1.0, n=4, seed=7)])[0]
    finally:
        handle.remove()
    prefills = [shape for shape in shapes if shape[1] > 1]
    assert len(prefills) == 1 and prefills[0][0] == 1  # the prompt ran once, for one row
    assert {shape for shape in shapes if shape[1] == 1} == {(4, 1)}  # four rows decode
    assert len(result.texts) == 4 and len(set(result.texts)) == 4


def test_seeded_samples_are_per_row_reproducible(backend: LocalBackend) -> None:
    request = ask(PROMPTS[1], temperature=1.0, top_p=0.9, n=3, seed=11)
    samples = texts(generate(backend, [request]))[0]
    assert texts(generate(backend, [request]))[0] == samples
    # Sample j is the first sample of seed derive_seed(11, j): one prefill or three, same draws.
    singles = [
        texts(generate(backend, [ask(PROMPTS[1], temperature=1.0, top_p=0.9, seed=s)]))[0][0]
        for s in (derive_seed(11, j) for j in range(3))
    ]
    assert samples == singles
    # ... and other requests in the batch (other prompts, other seeds) do not change them.
    crowd = [ask(p, temperature=1.0, top_p=0.9, seed=5) for p in PROMPTS]
    mixed = generate(backend, [crowd[0], request, *crowd[1:]])
    assert mixed[1].texts == samples


def test_n_greedy_samples_equal_the_single_greedy_sample(backend: LocalBackend) -> None:
    single = texts(generate(backend, [ask(PROMPTS[3])]))[0][0]
    assert texts(generate(backend, [ask(PROMPTS[3], n=3)]))[0] == [single] * 3


def test_usage_and_length_finish(backend: LocalBackend) -> None:
    result = generate(backend, [ask(PROMPTS[0], temperature=1.0, n=2, seed=1, max_new_tokens=5)])[0]
    prompt = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True, return_dict=False
    )
    assert result.prompt_tokens == len(prompt)
    assert result.completion_tokens == 10
    assert result.finish_reasons == ["length", "length"]


def test_stops_at_end_of_turn_and_drops_it(backend: LocalBackend) -> None:
    result = generate(backend, [ask(PROMPTS[0], grammar='root ::= "done"', max_new_tokens=20)])[0]
    assert result.texts == ["done"]
    assert result.finish_reasons == ["stop"]
    assert 2 <= result.completion_tokens <= len("done") + 1  # its tokens, then the end of turn


def test_adapters_change_outputs_and_mix_in_one_batch(
    backend: LocalBackend, lora_backend: LocalBackend
) -> None:
    prompt = PROMPTS[1]
    base = texts(generate(backend, [ask(prompt)]))[0]
    policy = texts(generate(lora_backend, [ask(prompt, model="policy")]))[0]
    world = texts(generate(lora_backend, [ask(prompt, model="world_model")]))[0]
    assert len({base[0], policy[0], world[0]}) == 3
    # The base through the adapter-carrying model is exactly the plain base, before and after.
    assert texts(generate(lora_backend, [ask(prompt)]))[0] == base
    mixed = generate(
        lora_backend, [ask(prompt, model="policy"), ask(prompt), ask(prompt, model="world_model")]
    )
    assert texts(mixed) == [policy, base, world]
    assert lora_backend.stats.generate_calls == 4  # the mixed batch was one call


def test_bad_requests_fail_alone(lora_backend: LocalBackend) -> None:
    before = lora_backend.stats.errors.copy()
    results = generate(
        lora_backend,
        [
            ask(PROMPTS[0], model="untrained"),  # configured without a path: not loaded
            ask(PROMPTS[0], grammar="root ::= undefined_rule"),
            ask(PROMPTS[0], max_new_tokens=10**6),
            ask(PROMPTS[0]),
        ],
    )
    assert [r.error.split(":")[0] if r.error else None for r in results] == [
        "not_found",
        "bad_request",
        "context_length",
        None,
    ]
    assert "undefined_rule" in (results[1].error or "")
    assert results[3].texts == texts(generate(lora_backend, [ask(PROMPTS[0])]))[0]
    counted = lora_backend.stats.errors - before
    assert counted == {"not_found": 1, "bad_request": 1, "context_length": 1}


def test_a_crashing_request_does_not_sink_its_batch(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = backend._run

    def poisoned(chunk):  # type: ignore[no-untyped-def]
        if any(item.request.role == "poison" for item in chunk):
            raise RuntimeError("boom")
        return run(chunk)

    monkeypatch.setattr(backend, "_run", poisoned)
    requests = [ask(PROMPTS[0]), ask(PROMPTS[1]), ask(PROMPTS[2])]
    requests[1] = GenerationRequest(messages=requests[1].messages, role="poison")
    results = generate(backend, requests)
    assert results[1].error == "internal: RuntimeError: boom"
    assert results[0].ok and results[2].ok


def test_agenerate_keeps_the_event_loop_free(backend: LocalBackend) -> None:
    async def main() -> tuple[int, list[Generation], list[Generation]]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        first, second = await asyncio.gather(
            backend.agenerate([ask(PROMPTS[0], max_new_tokens=16)]),
            backend.agenerate([ask(PROMPTS[1], max_new_tokens=16)]),
        )
        ticker.cancel()
        return ticks, first, second

    ticks, first, second = asyncio.run(main())
    assert ticks > 10
    assert texts(first + second) == texts(
        generate(backend, [ask(PROMPTS[0], max_new_tokens=16), ask(PROMPTS[1], max_new_tokens=16)])
    )


def test_seeded_sampler_draws_from_the_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0]]).repeat(20_000, 1)
    chosen = SeededSampler(list(range(20_000)))(torch.empty(0), logits.clone()).argmax(-1)
    frequencies = torch.bincount(chosen, minlength=5) / 20_000
    assert frequencies[2] == 0  # masked tokens never come out
    assert torch.allclose(frequencies, logits[0].softmax(-1), atol=0.01)


def test_from_model_serves_an_in_memory_model(backend: LocalBackend, tiny_path: Path) -> None:
    """A training-style tokenizer (right padding) is only read: the backend pads left itself."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_path, padding_side="right")
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    served = LocalBackend.from_model(model, tokenizer, name="in-memory")
    requests = [ask(p) for p in PROMPTS]
    assert texts(generate(served, requests)) == texts(generate(backend, requests))
    assert tokenizer.padding_side == "right"
    assert served.cache_identity["model"] == "in-memory"


# A system prompt long enough to be shared (well over share_prefix_min_tokens), as MCTS sends.
SYSTEM = (
    "You are a web agent. Read the accessibility tree, think briefly, then answer with "
    "exactly one action such as click [12], type [7] [text], scroll [down] or go_back. "
) * 4


def ask_with_system(text: str, model: str | None = None, **kwargs: object) -> GenerationRequest:
    request = ask(text, model, **kwargs)  # type: ignore[arg-type]
    messages = ({"role": "system", "content": SYSTEM}, *request.messages)
    return GenerationRequest(
        messages=messages, sampling=request.sampling, model=model, grammar=request.grammar
    )


def generate_with(
    backend: LocalBackend,
    requests: list[GenerationRequest],
    monkeypatch: pytest.MonkeyPatch,
    **attributes: object,
) -> list[Generation]:
    """``requests`` answered with ``backend``'s ``attributes`` set for this call only (a
    fast path switched off: the reference it must equal)."""
    with monkeypatch.context() as patch:
        for name, value in attributes.items():
            patch.setattr(backend, name, value)
        return generate(backend, requests)


def record_prefills(backend: LocalBackend) -> tuple[list[tuple[int, int]], object]:
    """Shapes of every forward of the decoder stack (prefills and decode steps)."""
    shapes: list[tuple[int, int]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    inner = backend.model.get_base_model() if hasattr(backend.model, "get_base_model") else None
    decoder = (inner or backend.model).model
    return shapes, decoder.register_forward_pre_hook(record, with_kwargs=True)


def test_shared_prefix_greedy_equals_unshared(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [ask_with_system(p) for p in PROMPTS]  # different lengths after one system prompt
    shared = texts(generate(backend, requests))
    assert shared == texts(generate_with(backend, requests, monkeypatch, share_prefix=False))
    assert shared == [texts(generate(backend, [r]))[0] for r in requests]
    assert len({t[0] for t in shared}) == len(PROMPTS)


def test_shared_prefix_with_n_samples_equals_unshared(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    greedy = [ask_with_system(p, n=3) for p in PROMPTS]
    assert texts(generate(backend, greedy)) == texts(
        generate_with(backend, greedy, monkeypatch, share_prefix=False)
    )
    seeded = [ask_with_system(p, n=3, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS)]
    sampled = texts(generate(backend, seeded))
    assert sampled == texts(generate_with(backend, seeded, monkeypatch, share_prefix=False))
    assert all(len(set(samples)) > 1 for samples in sampled)  # really sampled


def test_shared_prefix_with_grammars_equals_unshared(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    grammar = action_grammar(["12", "7", "164"], max_text_chars=8)
    requests = [
        ask_with_system(p, grammar=grammar if i % 2 == 0 else None, max_new_tokens=24)
        for i, p in enumerate(PROMPTS)
    ]
    shared = texts(generate(backend, requests))
    assert shared == texts(generate_with(backend, requests, monkeypatch, share_prefix=False))


def test_shared_prefix_in_a_mixed_adapter_chunk(
    lora_backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ["policy", None, "world_model", "policy"]
    requests = [ask_with_system(p, m, n=2) for p, m in zip(PROMPTS, models, strict=True)]
    shapes, handle = record_prefills(lora_backend)
    try:
        shared = texts(generate(lora_backend, requests))
    finally:
        handle.remove()
    assert shared == texts(generate_with(lora_backend, requests, monkeypatch, share_prefix=False))
    assert shared == [texts(generate(lora_backend, [r]))[0] for r in requests]
    # The prefix ran once per adapter present (policy, base, world_model), then the suffixes.
    prefills = [shape for shape in shapes if shape[1] > 1]
    assert [rows for rows, _ in prefills] == [3, 4]
    assert len(set(shared[0] + shared[1] + shared[2])) > 1  # adapters really differ


def test_shared_prefix_is_computed_once_per_chunk(backend: LocalBackend) -> None:
    requests = [ask_with_system(p, n=2) for p in PROMPTS]
    prompts = [
        backend.tokenizer.apply_chat_template(
            list(r.messages), add_generation_prompt=True, return_dict=False
        )
        for r in requests
    ]
    common = next(k for k in range(min(map(len, prompts))) if len({p[k] for p in prompts}) > 1)
    shapes, handle = record_prefills(backend)
    try:
        generate(backend, requests)
    finally:
        handle.remove()
    (prefix, suffixes), decode = shapes[:2], shapes[2:]
    assert prefix == (1, common) and common >= backend.share_prefix_min_tokens
    longest = max(map(len, prompts))
    assert suffixes == (len(PROMPTS), longest - common - 1)  # padded suffixes, last token left
    assert set(decode) == {(2 * len(PROMPTS), 1)}
    # Prefilled tokens: the prefix once plus padded suffixes, against every prompt in full.
    assert common + len(PROMPTS) * (longest - common - 1) < sum(len(p) - 1 for p in prompts)


def test_short_common_prefixes_are_not_split_off(backend: LocalBackend) -> None:
    requests = [ask(p) for p in PROMPTS]  # only the chat template's opening is common
    shapes, handle = record_prefills(backend)
    try:
        generate(backend, requests)
    finally:
        handle.remove()
    assert next(shape for shape in shapes if shape[1] > 1)[0] == len(PROMPTS)


def test_identical_prompts_need_no_suffix_prefill(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [ask_with_system(PROMPTS[1]), ask_with_system(PROMPTS[1], n=2)]
    shapes, handle = record_prefills(backend)
    try:
        shared = texts(generate(backend, requests))
    finally:
        handle.remove()
    assert [shape for shape in shapes if shape[1] > 1] == [(1, shapes[0][1])]  # one prefill
    assert shared == texts(generate_with(backend, requests, monkeypatch, share_prefix=False))
    assert shared[1] == shared[0] * 2
