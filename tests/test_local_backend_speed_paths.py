"""LocalBackend's fast paths give the answers of the plain ones.

The decode loop over a shared KV cache (prefix tree prefill, cascade attention,
finished rows dropped, batched grammar masks) is checked against transformers'
``generate`` over a per-row cache (``cascade_decode=False``), and its pieces
against dense references.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_local_backend import generate_with, record_prefills, texts

from websynthesis.backends import cascade as cascade_loop
from websynthesis.backends import sampling
from websynthesis.backends.cascade import CASCADE, Cascade
from websynthesis.backends.constraints import BatchGrammarMasks, GrammarLogitsProcessor
from websynthesis.backends.local import LocalBackend
from websynthesis.backends.prefill import buckets
from websynthesis.backends.types import Generation, GenerationRequest, Sampling, generate
from websynthesis.roles.grammar import action_grammar, score_grammar

SYSTEM = (
    "You are a web agent. Read the accessibility tree, think briefly, then answer with "
    "exactly one action such as click [12], type [7] [text], scroll [down] or go_back. "
) * 4
# Two tasks whose long descriptions are shared by several requests: a branch of the
# prefix tree below the system prompt, as MCTS sends for one task's trees.
TASKS = [
    "Task: find the cheapest HP inkjet fax machine in the catalogue and add it to the cart, "
    "then report its price with the currency sign. " * 2,
    "Task: open the forum, find the newest post about the city council and reply to it "
    "with a short summary of the post. " * 2,
]
ENDINGS = ["Step 1.", "Step 2, after a click.", "Step 3, after typing the name.", "Go on."]


@pytest.fixture(scope="module")
def backend(tiny_model_path: Path, adapters: dict[str, str]) -> LocalBackend:
    """In float64, so exact token equality between paths holds on any CPU's kernels (see
    test_local_backend's fixtures)."""
    return LocalBackend(str(tiny_model_path), adapters=adapters, dtype="float64")


def request(
    task: int, ending: int, model: str | None = None, grammar: str | None = None, **sampling: object
) -> GenerationRequest:
    sampling.setdefault("max_new_tokens", 12)
    return GenerationRequest(
        messages=(
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": TASKS[task] + ENDINGS[ending]},
        ),
        sampling=Sampling(**sampling),  # type: ignore[arg-type]
        model=model,
        grammar=grammar,
    )


def test_mixed_batch_equals_generate(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adapters, n, seeds, greedy and grammars mixed in one call: the same texts both ways."""
    grammar = action_grammar(["12", "7", "164"], max_text_chars=8)
    requests = [
        request(0, 0),
        request(0, 1, "policy", n=3, temperature=1.0, top_p=0.9, seed=4),
        request(1, 2, "world_model", grammar=score_grammar(), max_new_tokens=20),
        request(0, 3, "policy", grammar=grammar, n=2, temperature=0.7, seed=9, max_new_tokens=40),
        request(1, 0, n=2, temperature=1.0, seed=2),
        request(0, 0),  # a duplicate prompt shares everything
    ]
    fast = texts(generate(backend, requests))
    assert fast == texts(generate_with(backend, requests, monkeypatch, cascade_decode=False))
    assert fast == [texts(generate(backend, [r]))[0] for r in requests]
    assert fast[0] == fast[5]


def test_shared_branches_are_prefilled_once(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the chunk prefix, a task shared by several prompts runs once, then the endings."""
    requests = [request(task, ending) for task in (0, 1) for ending in range(3)]
    shapes, handle = record_prefills(backend)
    try:
        fast = texts(generate(backend, requests))
    finally:
        handle.remove()
    prefills = [shape for shape in shapes if shape[1] > 1]
    prompt = backend.tokenizer.apply_chat_template(
        list(requests[0].messages), add_generation_prompt=True, return_dict=False
    )
    # The system prompt once, each task's description once, then six short endings.
    assert prefills[0][0] == 1
    assert sum(rows * width for rows, width in prefills) < 0.5 * len(requests) * len(prompt)
    assert sum(rows for rows, _ in prefills[1:]) == 2 + len(requests)  # 2 branches, 6 leaves
    assert fast == texts(generate_with(backend, requests, monkeypatch, cascade_decode=False))
    with monkeypatch.context() as patch:
        patch.setattr(backend, "share_prefix", False)
        assert texts(generate(backend, requests)) == fast


@pytest.mark.parametrize("compact_when", [0, 4, 1000])
def test_finished_rows_leave_the_batch_without_changing_outputs(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, compact_when: int
) -> None:
    """Rows that stop early are dropped (never, once a quarter are done, at once): same texts."""
    short = 'root ::= "ok"'
    medium = 'root ::= "a much longer fixed answer than ok"'
    same = {"temperature": 1.0, "max_new_tokens": 24}  # one group: one decode batch
    requests = [
        request(0, 0, grammar=short, seed=3, **same),
        request(0, 1, n=2, seed=5, **same),
        request(1, 2, "policy", grammar=medium, seed=7, **same),
        request(1, 3, grammar=score_grammar(), n=2, seed=1, **same),
    ]
    expected = texts(generate_with(backend, requests, monkeypatch, cascade_decode=False))
    monkeypatch.setattr(cascade_loop, "COMPACT_WHEN", compact_when)
    shapes, handle = record_prefills(backend)
    try:
        results = generate(backend, requests)
    finally:
        handle.remove()
    assert texts(results) == expected
    assert results[0].texts == ["ok"] and results[0].finish_reasons == ["stop"]
    rows = [r for r, width in shapes if width == 1]
    if compact_when == 0:
        assert set(rows) == {6}  # never compacted: finished rows ride along
    else:
        assert rows[0] == 6 and rows[-1] < 6 and rows == sorted(rows, reverse=True)


def turns(task: int, *steps: str) -> GenerationRequest:
    """A later step of ``task``: its first prompt, then earlier actions and observations.

    The first step's whole prompt opens this one's: a node of the prefix tree that is
    both a prompt's end and other prompts' branch point.
    """
    messages: list[dict[str, str]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": TASKS[task] + ENDINGS[0]},
    ]
    for k, action in enumerate(steps):
        messages += [
            {"role": "assistant", "content": action},
            {"role": "user", "content": ENDINGS[1 + k % 3]},
        ]
    return GenerationRequest(messages=tuple(messages), sampling=Sampling(max_new_tokens=12))


def tokens_of(
    backend: LocalBackend,
    requests: list[GenerationRequest],
    monkeypatch: pytest.MonkeyPatch,
    **settings: object,
) -> list[list[list[int]]]:
    """Generated token ids per request and sample, up to and including the end-of-turn token.

    ``settings`` are backend attributes set for this call. With cascade decode on, the
    fallback to ``generate`` fails the call, so the decode loop is what answered.
    """
    captured: dict[int, list[list[int]]] = {}
    collect = backend._collect
    stops = set(backend.stop_token_ids)

    def record(
        chunk: list, ns: list[int], new_tokens: list[list[int]], logprobs: object = None
    ) -> list[Generation]:
        rows = iter(new_tokens)
        for item, n in zip(chunk, ns, strict=True):
            samples = [list(next(rows)) for _ in range(n)]
            ends = [next((k for k, t in enumerate(s) if t in stops), len(s)) for s in samples]
            captured[item.index] = [s[: end + 1] for s, end in zip(samples, ends, strict=True)]
        return collect(chunk, ns, new_tokens, logprobs)

    with monkeypatch.context() as patch:
        patch.setattr(backend, "_collect", record)
        for name, value in settings.items():
            patch.setattr(backend, name, value)
        if backend.cascade_decode:
            patch.setattr(backend, "_run_generate", None)  # calling it fails the request
        results = generate(backend, requests)
    assert all(r.ok for r in results), [r.error for r in results]
    return [captured[i] for i in range(len(requests))]


def mixed_requests(**sampling: object) -> list[GenerationRequest]:
    """Adapters, n, grammars (one that stops at once), a multi-turn prompt: one decode group."""
    same = {"max_new_tokens": 32, **sampling}
    base = [
        request(0, 0, **same),
        request(0, 1, "policy", n=3, **same),
        request(1, 2, "world_model", grammar=score_grammar(), **same),
        request(0, 3, "policy", grammar=action_grammar(["12", "7"], max_text_chars=8), **same),
        request(1, 0, grammar='root ::= "ok"', n=2, **same),
        request(1, 1, "world_model", **same),
        request(0, 0, **same),  # a duplicate prompt shares everything
    ]
    # Request 0's prompt opens the first of these, whose prompt opens the second.
    for later in (turns(0, "click [12]"), turns(0, "click [12]", "type [7] [fax]")):
        base.append(GenerationRequest(later.messages, Sampling(n=2, **same)))  # type: ignore[arg-type]
    return [
        GenerationRequest(r.messages, replace(r.sampling, seed=i), r.model, r.grammar)
        for i, r in enumerate(base)
    ]


@pytest.mark.parametrize("compact_when", [0, 4, 1000])
def test_greedy_tokens_equal_generate_exactly(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, compact_when: int
) -> None:
    """Greedy, fp32 on CPU: the same token ids as ``generate``, compacting or not."""
    requests = mixed_requests()
    expected = tokens_of(backend, requests, monkeypatch, cascade_decode=False)
    monkeypatch.setattr(cascade_loop, "COMPACT_WHEN", compact_when)
    assert tokens_of(backend, requests, monkeypatch) == expected
    lengths = {len(sample) for samples in expected for sample in samples}
    assert min(lengths) <= 3 and max(lengths) == 32  # rows finish at different steps
    assert expected[1] == [expected[1][0]] * 3  # greedy samples of one prompt agree
    assert expected[0] == expected[6]
    assert len({tuple(expected[k][0]) for k in (0, 1, 5)}) == 3  # the adapters differ


@pytest.mark.parametrize("compact_when", [0, 1000])
def test_seeded_samples_equal_generate_exactly(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, compact_when: int
) -> None:
    """Seeded sampling (temperature, top-p, n, grammars, adapters): the same token ids."""
    requests = mixed_requests(temperature=0.8, top_p=0.9)
    expected = tokens_of(backend, requests, monkeypatch, cascade_decode=False)
    monkeypatch.setattr(cascade_loop, "COMPACT_WHEN", compact_when)
    fast = tokens_of(backend, requests, monkeypatch)
    assert fast == expected
    assert len({tuple(sample) for sample in expected[1]}) > 1  # really sampled
    # Each request alone (other rows, other batch): the same draws.
    assert [tokens_of(backend, [r], monkeypatch)[0] for r in requests] == fast


@pytest.mark.parametrize(
    "settings",
    [
        {"share_prefix": False},
        {"share_prefix_min_tokens": 1},
        {"share_prefix_min_tokens": 10**6},
        {"max_batch_size": 3},
    ],
    ids=["no-sharing", "every-branch", "no-branch", "chunks-of-3"],
)
def test_prefix_tree_shapes_do_not_change_tokens(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, settings: dict[str, object]
) -> None:
    """However the prompts are cut into prefills and chunks: greedy tokens as ``generate``'s."""
    requests = mixed_requests(max_new_tokens=16)
    expected = tokens_of(backend, requests, monkeypatch, cascade_decode=False)
    assert tokens_of(backend, requests, monkeypatch, **settings) == expected


def test_a_prompt_that_opens_another(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt that is all of the chunk prefix (nothing of its own) and one that goes on."""
    first, later = turns(1), turns(1, "click [7]")
    ids = [
        backend.tokenizer.apply_chat_template(
            list(r.messages), add_generation_prompt=True, return_dict=False
        )
        for r in (first, later)
    ]
    assert ids[1][: len(ids[0])] == ids[0]
    requests = [first, later, GenerationRequest(first.messages, Sampling(n=2, max_new_tokens=12))]
    expected = tokens_of(backend, requests, monkeypatch, cascade_decode=False)
    assert tokens_of(backend, requests, monkeypatch) == expected
    assert expected[2] == [expected[0][0]] * 2


def test_attention_is_restored_after_a_failure(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = backend.model.get_base_model().config
    before = config._attn_implementation

    def boom(*args: object, **kwargs: object) -> None:
        assert config._attn_implementation == CASCADE
        raise RuntimeError("boom")

    monkeypatch.setattr(sampling.Chooser, "choose", boom)
    result = generate(backend, [request(0, 0)])[0]
    assert result.error == "internal: RuntimeError: boom"
    assert config._attn_implementation == before


def dense_attention(
    q: torch.Tensor, prefix: torch.Tensor | None, rests: torch.Tensor | None, own: torch.Tensor
) -> torch.Tensor:
    """Per-row keys laid out in full, one softmax: what the cascade must equal."""
    keys = torch.cat([k for k in (prefix, rests, own) if k is not None], dim=2)
    return torch.nn.functional.scaled_dot_product_attention(q, keys, keys, enable_gqa=True)


@pytest.mark.parametrize("adapters", [1, 2])
def test_cascade_attention_equals_dense_attention(adapters: int) -> None:
    """Prefix per adapter, padded rests per prompt, own tokens per row; rows then dropped."""
    torch.manual_seed(0)
    f64 = torch.float64  # compares the merged softmax with SDPA's, not two kernels' rounding
    heads, kv_heads, dim, steps = 4, 2, 8, 5
    lengths = [3, 0, 7, 5]  # a prompt may have nothing past the chunk prefix
    prefix = torch.randn(adapters, kv_heads, 6, dim, dtype=f64)
    rests = [torch.randn(1, kv_heads, length, dim, dtype=f64) for length in lengths]
    row_adapter = [0, adapters - 1, 0, adapters - 1, 0, 0, adapters - 1]
    row_prompt = [0, 0, 1, 2, 2, 2, 3]  # uneven groups: the grid path
    cascade = Cascade(
        [(prefix, prefix * 2)],
        [[(rest, rest * 2)] if len(rest[0, 0]) else None for rest in rests],
        lengths,
    )
    cascade.start(row_adapter, row_prompt, steps)
    rows = list(range(len(row_prompt)))
    own: dict[int, torch.Tensor] = {}
    for step in range(steps):
        cascade.step = step
        q = torch.randn(len(rows), heads, 1, dim, dtype=f64)
        k = torch.randn(len(rows), kv_heads, 1, dim, dtype=f64)
        got = cascade.attend(0, q, k, k * 2, None)
        for i, r in enumerate(rows):
            own[r] = k[i : i + 1] if step == 0 else torch.cat([own[r], k[i : i + 1]], dim=2)
            a, p = row_adapter[r], row_prompt[r]
            keys = torch.cat([prefix[a : a + 1], rests[p], own[r]], dim=2)
            expected = torch.nn.functional.scaled_dot_product_attention(
                q[i : i + 1], keys, keys * 2, enable_gqa=True
            )
            torch.testing.assert_close(got[i : i + 1].transpose(1, 2), expected)
        if step in (1, 3):  # rows finish and leave, as in the decode loop
            keep = [k for k in range(len(rows)) if k not in (0, 2)]
            cascade.keep(torch.tensor(keep))
            rows = [rows[k] for k in keep]


def test_batch_grammar_masks_equal_the_per_row_processor(backend: LocalBackend) -> None:
    """Same masks, wrap-ups included, when a row is dropped and the rest move up."""
    grammars = [
        action_grammar(["12", "7"], max_text_chars=8),
        None,
        score_grammar(),
        action_grammar(["3"], max_text_chars=6),
    ]
    constraints = [backend.grammars.compile(g) if g else None for g in grammars]
    budget = 40  # below the action grammar's reserve: the wrap-up starts at once
    plain = GrammarLogitsProcessor(constraints, budget)
    batched = BatchGrammarMasks(constraints, budget)
    rows = list(range(len(constraints)))
    history = torch.zeros(len(constraints), 1, dtype=torch.long)  # the prompt, unread
    last: list[int] | None = None
    for step in range(budget):
        logits = torch.randn(len(constraints), backend.vocab_size)
        full = plain(history, logits.clone())
        mine = logits[rows].clone()
        batched.mask(mine, rows, last)
        torch.testing.assert_close(mine, full[rows])
        tokens = full.argmax(dim=-1)
        history = torch.cat([history, tokens[:, None]], dim=1)
        if step == 5:
            rows = [0, 2, 3]  # row 1 leaves the batch; the others move up
        last = [int(tokens[r]) for r in rows]
    assert plain._matchers[0].is_terminated()  # the wrap-up finished the action in budget


def test_buckets_cut_where_padding_costs_more_than_a_call() -> None:
    assert buckets([5, 5, 5], 128) == [[0, 1, 2]]
    assert buckets([1000, 10, 12], 128) == [[0], [2, 1]]
    assert sorted(i for cut in buckets([3, 900, 40, 850, 7], 64) for i in cut) == list(range(5))
    assert buckets([], 10) == []
