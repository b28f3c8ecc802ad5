"""A :class:`~websynthesis.models.types.Backend` that runs one transformers model in-process.

One base model serves several roles through named LoRA adapters (policy,
world model): a request's ``model`` names its adapter, ``None`` the base.

How a batch of requests becomes model calls:

* Requests are rendered with the model's chat template (generation prompt on)
  and tokenized piece by piece, a piece seen before not again
  (:class:`~websynthesis.models.prompt_tokens.PromptTokenizer`), checked one
  by one (unknown adapter, grammar that does not compile, prompt too long...:
  that request's ``error``), then grouped by what a decode loop
  fixes: temperature, top_p and max_new_tokens. Adapters, seeds, ``n`` and
  grammars may differ inside a group; seeds and grammars are per row.
* A group is sorted by adapter and prompt, so requests that open alike (one
  role's prompts, one tree's, one task's) are neighbours, and cut into chunks
  of at most ``max_batch_size`` rows (samples). A chunk runs with its adapter
  active when all its rows share one, and as peft's mixed batch
  (``adapter_names=``, one per row) when they do not: one call reads the base
  weights once for all rows, which is what decoding is bound by on a GPU.

**Prefill: every shared token once.** A chunk's prompts (all but their last
token) are prefilled as a prefix tree: the prefix common to the whole chunk
once per adapter (KV computed under one adapter is never reused under
another), then each branch that several prompts share (a task's intent and
page, a tree's history) once, then what is left of each distinct prompt;
``n`` samples of a prompt share all of it. A shared run of fewer than
``share_prefix_min_tokens`` is not split off (a call costs more than it
saves). Siblings run together, right-padded (padding after a sequence cannot
change it under a causal mask), cut by length so padding costs less than a
call would.

**Decode: shared keys read once.** The KV cache is not copied per row. Each
layer keeps three parts: the chunk prefix (one copy per adapter), each
distinct prompt's remainder (one copy per prompt, padded and masked), and
each row's own generated tokens (preallocated, no per-step concatenation).
Attention for a step scores every row's query against each part with one
batched matmul per part (rows grouped by the prefix or prompt they read)
and takes one softmax over all of them. Reading the KV cache is what a step
costs once the batch is wide: with the cache replicated per row (as
``generate`` does) a 64-row policy step on 1,800-token prompts read and
copied ~0.7 GB; this reads the prompt keys once. The backend's own loop
(not ``generate``) also drops finished rows from the batch (compacting
their caches once an eighth of the batch is done), fills all grammar masks
of a step in one xgrammar call (:class:`BatchGrammarMasks`), and picks
tokens without a second pass over the vocabulary. Models whose layers are
not all full attention (sliding windows) fall back to ``generate`` with
the same sampling and masks (``cascade_decode=False`` forces that path).

Rows stop at the end-of-turn token(s) (``<|im_end|>`` for Qwen chat models),
which the returned text excludes; ``finish_reasons`` is ``stop`` or ``length``.

**Reproducibility.** Sample ``j`` of a request with seed ``s`` is drawn with
its own ``torch.Generator`` seeded ``derive_seed(s, j)``, so it depends only on
the model, the request and ``(s, j)``, not on the other requests of the batch,
its order or chunking, nor on ``n``. Exact on CPU in fp32 up to float
rounding (which rows share a matmul changes the last bits of the logits, so
a near-tied token may rarely go the other way); on a GPU kernels chosen by
batch shape do the same. Greedy requests (temperature 0) need no seed.
Requests without a seed draw from torch's global generator.

A failing chunk (out of memory, a kernel error) is retried request by request,
so one bad request fails alone; ``stats`` counts errors by kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    AttentionInterface,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.counters import Counters
from websynthesis.models.grammar import (
    BatchGrammarMasks,
    Constraint,
    GrammarCompiler,
    GrammarLogitsProcessor,
)
from websynthesis.models.loading import load_model, load_tokenizer, resolve_model_path
from websynthesis.models.prompt_tokens import PromptTokenizer
from websynthesis.models.types import (
    Generation,
    GenerationRequest,
    Sampling,
    TokenLogprob,
    derive_seed,
)

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's adapter_names entry for "no adapter"
CASCADE = "websynthesis_cascade"  # the attention implementation of the decode loop
# A forward call's fixed cost in prefilled token rows: padding that costs less than this
# is cheaper than another call. Measured ~40 for the tiny model on CPU (2 ms a call, 0.05
# ms a token), hundreds for a 7B model on a GPU; the larger value errs towards fewer calls.
CALL_COST_TOKENS = 128
# Finished rows leave the decode batch once they are 1/COMPACT_WHEN of it: compacting copies
# the rows' generated keys, decoding a finished row costs its share of every step.
COMPACT_WHEN = 8
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass
class LocalStats(Counters):
    """What the backend did: decode batches, rows decoded, and errors by kind.

    ``generate_calls`` counts decode batches, whichever loop ran them (transformers'
    ``generate`` or the backend's own cascade decode).
    """

    generate_calls: int = 0
    rows: int = 0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Item:
    """A checked request: where its answer goes, its prompt ids, adapter and grammar."""

    index: int
    request: GenerationRequest
    prompt: list[int]
    adapter: str
    constraint: Constraint | None


class _Rejected(Exception):
    """A request that cannot run; ``str()`` is its ``"<kind>: <message>"`` error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values of every layer, each ``[batch, kv_heads, tokens, head_dim]``."""


@dataclass
class _Node:
    """A run of prompt tokens that the prompts below it share, under one adapter."""

    adapter: str
    tokens: list[int]
    ends: list[int]  # distinct prompts that end with this run
    children: list[_Node]


class LocalBackend:
    """Chat generation with a local transformers model and named LoRA adapters.

    Args:
        model_path: local directory, Hub id, or the tiny model (see ``loading.py``).
        adapters: adapter name -> adapter directory; entries whose path is empty
            or ``None`` are skipped (an untrained role then uses the base).
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU) or a torch dtype name.
        attn_implementation: ``auto`` (flash_attention_2 when usable, else sdpa)
            or an explicit transformers value.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        max_batch_size: most rows (samples, not requests) per decode batch.
        share_prefix: prefill shared prompt prefixes once (see the module
            docstring); off only to compare against, outputs are the same.
        share_prefix_min_tokens: shortest shared prefix worth a separate prefill
            call; below it the extra call costs more than the tokens it saves.
        cascade_decode: the backend's own decode loop over a shared KV cache (see
            the module docstring); off, or for models it does not support,
            transformers' ``generate`` over a per-row cache.
    """

    def __init__(
        self,
        model_path: str,
        adapters: Mapping[str, str | None] | None = None,
        dtype: str = "auto",
        attn_implementation: str = "auto",
        device: str = "auto",
        max_batch_size: int = 64,
        share_prefix: bool = True,
        share_prefix_min_tokens: int = 32,
        cascade_decode: bool = True,
    ) -> None:
        path = resolve_model_path(str(model_path))
        base = load_model(path, dtype=dtype, attn_implementation=attn_implementation, device=device)
        self._setup(
            path,
            base,
            load_tokenizer(path),
            adapters,
            max_batch_size,
            share_prefix=share_prefix,
            share_prefix_min_tokens=share_prefix_min_tokens,
            cascade_decode=cascade_decode,
        )

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        adapters: Mapping[str, str | None] | None = None,
        max_batch_size: int = 64,
        share_prefix: bool = True,
        share_prefix_min_tokens: int = 32,
        cascade_decode: bool = True,
    ) -> LocalBackend:
        """Serve a model already in memory (a benchmark's random one, a training run's).

        ``name`` stands for ``model_path`` in :attr:`cache_identity`. The
        model's generation config is replaced (see ``__init__``); the tokenizer
        is only read, and needs a chat template and a pad token. While a batch
        decodes, the model's ``config._attn_implementation`` names this
        backend's attention (restored after each batch).
        """
        backend = cls.__new__(cls)
        backend._setup(
            name,
            model,
            tokenizer,
            adapters,
            max_batch_size,
            share_prefix=share_prefix,
            share_prefix_min_tokens=share_prefix_min_tokens,
            cascade_decode=cascade_decode,
        )
        return backend

    def _setup(
        self,
        model_path: str,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapters: Mapping[str, str | None] | None,
        max_batch_size: int,
        *,
        share_prefix: bool,
        share_prefix_min_tokens: int,
        cascade_decode: bool,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if tokenizer.chat_template is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a chat template and a pad token")
        self.model_path = model_path
        self.adapters = {name: str(path) for name, path in (adapters or {}).items() if path}
        self.max_batch_size = max_batch_size
        # Public and mutable: the benchmark flips these on and off on one loaded model.
        self.share_prefix = share_prefix
        self.share_prefix_min_tokens = share_prefix_min_tokens
        self.cascade_decode = cascade_decode
        self.tokenizer = tokenizer
        self._prompt_ids = PromptTokenizer(tokenizer)
        self.stop_token_ids = _stop_token_ids(base, self.tokenizer.eos_token_id)
        # Sampling is the request's alone: no top_k / repetition penalty from the checkpoint.
        base.generation_config = GenerationConfig(
            eos_token_id=self.stop_token_ids, pad_token_id=self.tokenizer.pad_token_id
        )
        self.context_length = base.config.max_position_embeddings
        self.vocab_size = base.config.vocab_size
        self._base_config = base.config
        self._cascade_supported = _cascade_supported(base)
        if not self._cascade_supported:
            log.info("%s: no cascade decode for this model; decoding with generate", model_path)
        self._adapter_digests = {
            name: adapter_digest(path) for name, path in sorted(self.adapters.items())
        }
        self.model = _with_adapters(base, self.adapters)
        self.device = base.device
        self.stats = LocalStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalBackend(model_path={self.model_path!r}, adapters={sorted(self.adapters)})"

    @property
    def cache_identity(self) -> dict[str, Any]:
        """What makes this backend's answers differ from another's (see ``cache.py``).

        Adapters by the digest of their files as loaded, not their paths:
        co-evolution and retraining write new weights where the old ones were, and a
        cache keyed by path would answer with the old adapter's samples.
        """
        return {"kind": "local", "model": self.model_path, "adapters": self._adapter_digests}

    @cached_property
    def grammars(self) -> GrammarCompiler:
        """Built on first use: reading a 150k-token vocabulary takes a moment."""
        return GrammarCompiler(self.tokenizer, self.vocab_size, self.stop_token_ids)

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answer ``requests`` in a worker thread, one batch at a time (the loop stays free)."""
        return await asyncio.to_thread(self._generate_locked, list(requests))

    def close(self) -> None:
        """Drop the model and return its device memory."""
        self.__dict__.pop("model", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate_locked(self, requests: list[GenerationRequest]) -> list[Generation]:
        if "model" not in self.__dict__:
            raise RuntimeError("this LocalBackend is closed")
        with self._lock:
            return self._generate(requests)

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        results: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple[float, float, int], list[_Item]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                item = self._check(index, request)
            except _Rejected as rejected:
                self.stats.errors[rejected.kind] += 1
                results[index] = Generation(texts=[], error=str(rejected))
                continue
            s = request.sampling
            groups[(s.temperature, s.top_p, s.max_new_tokens)].append(item)
        for items in groups.values():
            # Neighbours share prefixes: one adapter's prompts together, then by their tokens.
            items.sort(key=lambda item: (item.adapter, item.prompt))
            for chunk in self._chunks(items):
                for item, generation in zip(chunk, self._run_safely(chunk), strict=True):
                    results[item.index] = generation
        return [r for r in results if r is not None]

    def _check(self, index: int, request: GenerationRequest) -> _Item:
        """Render and validate one request; raises :class:`_Rejected` with its error."""
        s = request.sampling
        if s.n < 1 or s.max_new_tokens < 1 or s.temperature < 0 or not 0 < s.top_p <= 1:
            raise _Rejected("bad_request", f"invalid sampling {s}")
        if s.logprobs is not None:
            if not 0 <= s.logprobs <= MAX_TOP_LOGPROBS:
                raise _Rejected("bad_request", f"logprobs must be 0..{MAX_TOP_LOGPROBS}")
            if not (self.cascade_decode and self._cascade_supported):
                raise _Rejected("bad_request", "logprobs need the cascade decode (Qwen2 models)")
        if request.model is not None and request.model not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise _Rejected("not_found", f"unknown adapter {request.model!r} (loaded: {known})")
        try:
            if request.prompt is not None:
                prompt = self._prompt_ids.text_ids(request.prompt)
            else:
                prompt = self._prompt_ids(request.messages)
        except Exception as error:  # a template may raise on roles or content it refuses
            raise _Rejected("bad_request", f"chat template: {error}") from None
        if len(prompt) + s.max_new_tokens > self.context_length:
            raise _Rejected(
                "context_length",
                f"{len(prompt)} prompt + {s.max_new_tokens} new tokens > {self.context_length}",
            )
        constraint = None
        if request.grammar is not None:
            try:
                constraint = self.grammars.compile(request.grammar)
            except ValueError as error:
                raise _Rejected("bad_request", f"grammar does not compile: {error}") from None
        return _Item(index, request, prompt, request.model or BASE, constraint)

    def _chunks(self, items: list[_Item]) -> list[list[_Item]]:
        """Consecutive runs of at most ``max_batch_size`` rows (a lone large ``n`` runs alone)."""
        chunks: list[list[_Item]] = [[]]
        rows = 0
        for item in items:
            n = item.request.sampling.n
            if chunks[-1] and rows + n > self.max_batch_size:
                chunks.append([])
                rows = 0
            chunks[-1].append(item)
            rows += n
        return chunks

    def _run_safely(self, chunk: list[_Item]) -> list[Generation]:
        """Run ``chunk``; if it fails, run its requests alone so only the culprit fails."""
        try:
            return self._run(chunk)
        except Exception as error:
            if len(chunk) > 1:
                log.warning("a batch of %d failed (%r); retrying one by one", len(chunk), error)
                return [g for item in chunk for g in self._run_safely([item])]
            log.exception("request %d failed", chunk[0].index)
            self.stats.errors["internal"] += 1
            return [Generation(texts=[], error=f"internal: {type(error).__name__}: {error}")]

    def _run(self, chunk: list[_Item]) -> list[Generation]:
        """One prefill and one decode for the chunk; every sample is a row."""
        if self.cascade_decode and self._cascade_supported:
            return self._run_cascade(chunk)
        return self._run_generate(chunk)

    # --- the backend's own decode loop over a shared KV cache -----------------------------

    @torch.inference_mode()
    def _run_cascade(self, chunk: list[_Item]) -> list[Generation]:
        """Prefill the chunk's prompt tree, then decode all rows over the shared cache."""
        sampling = chunk[0].request.sampling
        ns = [item.request.sampling.n for item in chunk]
        # Distinct prompts (adapter and all but the last token): their KV is computed once.
        distinct: dict[tuple[str, tuple[int, ...]], int] = {}
        prompt_of_item = [
            distinct.setdefault((item.adapter, tuple(item.prompt[:-1])), len(distinct))
            for item in chunk
        ]
        adapters = list(dict.fromkeys(item.adapter for item in chunk))
        row_items, sample_index = self._rows(chunk, ns)
        row_prompts = [p for p, n in zip(prompt_of_item, ns, strict=True) for _ in range(n)]
        with self._adapters_for([item.adapter for item in chunk]) as mixed:
            cascade = self._prefill_tree(
                [(adapter, list(body)) for adapter, body in distinct],
                adapters,
                mixed is not None,
            )
            cascade.start(
                [adapters.index(item.adapter) for item in row_items],
                row_prompts,
                sampling.max_new_tokens,
            )
            names = [item.adapter for item in row_items] if mixed else None
            tokens, logprobs = self._decode(cascade, row_items, sample_index, sampling, names)
        return self._collect(chunk, ns, tokens, logprobs)

    def _prefill_tree(
        self, prompts: list[tuple[str, list[int]]], adapters: list[str], mixed: bool
    ) -> _Cascade:
        """KV of every distinct prompt, each shared run of tokens computed once.

        ``prompts`` are (adapter, tokens) pairs, ``adapters`` those present in
        order. The chunk prefix becomes the cascade's first part (one row per
        adapter), what follows it in each prompt its second part.
        """
        bodies = [body for _, body in prompts]
        common = self._common_prefix(bodies)
        prefix: KV | None = None
        if common:
            ids = torch.tensor([bodies[0][:common]] * len(adapters), device=self.device)
            prefix = self._extend(None, 0, ids, adapters if mixed else None, [])
        tails = [(i, a, body[common:]) for i, (a, body) in enumerate(prompts) if body[common:]]
        rests: list[KV | None] = [None] * len(prompts)
        nodes = self._radix(tails)
        if nodes:
            self._grow(nodes, prefix, adapters, common, None, rests, mixed)
        return _Cascade(prefix, rests, [len(body) - common for body in bodies])

    def _common_prefix(self, bodies: list[list[int]]) -> int:
        """Tokens every body opens with, or 0 when too few to be worth a call of their own."""
        if not self.share_prefix:
            return 0
        limit = min(len(b) for b in bodies)
        columns = enumerate(zip(*bodies, strict=False))  # lengths differ: up to the shortest
        length = next((k for k, col in columns if len(set(col)) > 1), limit)
        return length if length >= self.share_prefix_min_tokens else 0

    def _radix(self, members: list[tuple[int, str, list[int]]]) -> list[_Node]:
        """The prefix tree of ``(prompt, adapter, tokens)``, runs too short to share merged.

        A run shorter than ``share_prefix_min_tokens`` (or any, with sharing
        off) is not computed on its own: it is prepended to each branch below it.
        """
        nodes = []
        groups: dict[tuple[str, int], list[tuple[int, str, list[int]]]] = defaultdict(list)
        for member in members:
            groups[(member[1], member[2][0])].append(member)
        for (adapter, _), group in groups.items():
            tails = [tokens for _, _, tokens in group]
            shared = next(
                (k for k, col in enumerate(zip(*tails, strict=False)) if len(set(col)) > 1),
                min(map(len, tails)),
            )
            below = [(i, a, t[shared:]) for i, a, t in group if len(t) > shared]
            node = _Node(
                adapter, tails[0][:shared], [i for i, _, t in group if len(t) == shared], []
            )
            node.children = self._radix(below)
            if node.children and (not self.share_prefix or shared < self.share_prefix_min_tokens):
                # Not worth a call: each branch below starts with this run instead.
                for child in node.children:
                    child.tokens = node.tokens + child.tokens
                nodes += node.children
                if node.ends:
                    nodes.append(_Node(adapter, node.tokens, node.ends, []))
            else:
                nodes.append(node)
        return nodes

    def _grow(
        self,
        nodes: list[_Node],
        past: KV | None,
        adapters: list[str],
        offset: int,
        above: KV | None,
        rests: list[KV | None],
        mixed: bool,
    ) -> None:
        """Prefill sibling ``nodes`` on top of ``past``, then their subtrees; fill ``rests``.

        ``past`` has one row per adapter at the top of the tree (the chunk
        prefix), one row below it; ``above`` is the KV between the chunk prefix
        and these nodes, which a prompt's rest starts with.
        """
        pad = self.tokenizer.pad_token_id
        for bucket in _buckets([len(node.tokens) for node in nodes], CALL_COST_TOKENS):
            group = [nodes[i] for i in bucket]
            width = max(len(node.tokens) for node in group)
            ids = torch.tensor(
                [node.tokens + [pad] * (width - len(node.tokens)) for node in group],
                device=self.device,
            )
            # Row of ``past`` each node continues: its adapter's at the top, the one below.
            top = past is not None and len(past[0][0]) > 1
            rows = [adapters.index(node.adapter) if top else 0 for node in group]
            names = [node.adapter for node in group] if mixed else None
            new = self._extend(past, offset, ids, names, rows)
            for k, node in enumerate(group):
                size = len(node.tokens)
                own = [(key[k : k + 1, :, :size], value[k : k + 1, :, :size]) for key, value in new]
                mine = own if above is None else _cat(above, own)
                for prompt in node.ends:
                    rests[prompt] = mine
                if node.children:
                    if past is None:
                        below = own
                    else:
                        row = slice(rows[k], rows[k] + 1)
                        below = _cat([(key[row], value[row]) for key, value in past], own)
                    self._grow(node.children, below, adapters, offset + size, mine, rests, mixed)

    def _extend(
        self,
        past: KV | None,
        offset: int,
        ids: torch.Tensor,
        names: list[str] | None,
        rows: list[int],
    ) -> KV:
        """KV of ``ids`` (right-padded rows), row ``k`` after row ``rows[k]`` of ``past``.

        Padding sits after each row's tokens, so under the causal mask no real
        token sees it; its keys and values are simply not used.
        """
        cache = DynamicCache()
        if past is not None:
            index = torch.tensor(rows, device=self.device)
            for layer, (key, value) in enumerate(past):
                cache.update(key[index], value[index], layer)
        positions = torch.arange(offset, offset + ids.shape[1], device=self.device)
        self.model(
            input_ids=ids,
            position_ids=positions.expand(len(ids), -1),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **({"adapter_names": names} if names else {}),
        )
        return [(layer.keys[:, :, offset:], layer.values[:, :, offset:]) for layer in cache.layers]

    def _decode(
        self,
        cascade: _Cascade,
        row_items: list[_Item],
        sample_index: list[int],
        sampling: Sampling,
        names: list[str] | None,
    ) -> tuple[list[list[int]], list[list[_Logprob]] | None]:
        """Decode every row to its end-of-turn or the budget; finished rows leave the batch.

        With a request for logprobs in the chunk, each row's tokens also get their
        log-probabilities under the model (before the grammar's mask and the temperature)
        and the chunk's largest ``top`` alternatives."""
        stops = set(self.stop_token_ids)
        wanted = [item.request.sampling.logprobs for item in row_items]
        top = max((k for k in wanted if k is not None), default=None)
        logprobs: list[list[_Logprob]] | None = None if top is None else [[] for _ in row_items]
        grammar = None
        if any(item.constraint for item in row_items):
            grammar = BatchGrammarMasks(
                [item.constraint for item in row_items], sampling.max_new_tokens
            )
        chooser = _Chooser(
            sampling,
            [
                derive_seed(item.request.sampling.seed, j)
                for item, j in zip(row_items, sample_index, strict=True)
            ],
        )
        rows = list(range(len(row_items)))  # the original row of each batch row
        tokens: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        ids = torch.tensor([item.prompt[-1] for item in row_items], device=self.device)
        positions = torch.tensor([len(item.prompt) - 1 for item in row_items], device=self.device)
        last: list[int] | None = None
        with self._cascade_attention():
            for step in range(sampling.max_new_tokens):
                cascade.step = step
                logits = (
                    self.model(
                        input_ids=ids[:, None],
                        position_ids=positions[:, None],
                        attention_mask={"full_attention": cascade},
                        use_cache=False,
                        **({"adapter_names": names} if names else {}),
                    )
                    .logits[:, -1]
                    .float()
                )
                raw = logits.log_softmax(dim=-1) if logprobs is not None else None
                if grammar is not None:
                    grammar.mask(logits, rows, last)
                ids = chooser.choose(logits, rows)
                last = ids.tolist()
                if logprobs is not None and raw is not None:
                    _record(logprobs, rows, done, raw, ids, top or 0)
                for row, token in zip(rows, last, strict=True):
                    if not done[row]:
                        tokens[row].append(token)
                        done[row] = token in stops
                finished = [k for k, row in enumerate(rows) if done[row]]
                if len(finished) == len(rows):
                    break
                positions = positions + 1
                if finished and COMPACT_WHEN * len(finished) >= len(rows):
                    keep = [k for k, row in enumerate(rows) if not done[row]]
                    index = torch.tensor(keep, device=self.device)
                    cascade.keep(index)
                    ids, positions = ids[index], positions[index]
                    rows = [rows[k] for k in keep]
                    last = [last[k] for k in keep]
                    names = [names[k] for k in keep] if names else None
        return tokens, logprobs

    @contextlib.contextmanager
    def _cascade_attention(self) -> Iterator[None]:
        """The model's attention layers call :func:`_cascade_attention` while this is open."""
        config = self._base_config
        previous = config._attn_implementation
        config._attn_implementation = CASCADE
        try:
            yield
        finally:
            config._attn_implementation = previous

    # --- transformers' generate over a per-row cache (fallback and reference) -------------

    @torch.inference_mode()
    def _run_generate(self, chunk: list[_Item]) -> list[Generation]:
        """One prefill and one ``generate`` for the chunk; every sample is a row."""
        sampling = chunk[0].request.sampling
        shared = self._shared_prefix_length(chunk)
        prefix = torch.tensor([chunk[0].prompt[:shared]], dtype=torch.long, device=self.device)
        suffixes = {"input_ids": [item.prompt[shared:] for item in chunk]}
        padded = self.tokenizer.pad(suffixes, padding_side="left", return_tensors="pt")
        # The padding sits between the prefix and each suffix (none when shared == 0).
        input_ids = torch.cat(
            [prefix.expand(len(chunk), -1), padded["input_ids"].to(self.device)], dim=1
        )
        attention_mask = torch.cat(
            [torch.ones_like(input_ids[:, :shared]), padded["attention_mask"].to(self.device)],
            dim=1,
        )
        ns = [item.request.sampling.n for item in chunk]
        rows = torch.repeat_interleave(torch.arange(len(chunk)), torch.tensor(ns)).to(self.device)
        row_items, sample_index = self._rows(chunk, ns)
        with self._adapters_for([item.adapter for item in chunk]) as mixed:
            cache = self._prefill(input_ids[:, :-1], attention_mask[:, :-1], mixed, shared)
            cache.batch_select_indices(rows)
            output = self.model.generate(
                input_ids=input_ids[rows],
                attention_mask=attention_mask[rows],
                past_key_values=cache,
                generation_config=GenerationConfig(
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=False,  # sampling, if any, is done by a seeded processor
                    eos_token_id=self.stop_token_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                ),
                logits_processor=self._processors(row_items, sample_index, sampling),
                **({"adapter_names": [mixed[i] for i in rows.tolist()]} if mixed else {}),
            )
        return self._collect(chunk, ns, output[:, input_ids.shape[1] :].tolist())

    def _rows(self, chunk: list[_Item], ns: list[int]) -> tuple[list[_Item], list[int]]:
        """Each decode row's request and sample index (``n`` rows per request); counted."""
        row_items = [item for item, n in zip(chunk, ns, strict=True) for _ in range(n)]
        self.stats.generate_calls += 1
        self.stats.rows += len(row_items)
        return row_items, [j for n in ns for j in range(n)]

    def _shared_prefix_length(self, chunk: list[_Item]) -> int:
        """Tokens every prompt of ``chunk`` opens with, or 0 when too few to be worth a call.

        Each row keeps at least its last token out of the prefix: ``generate``
        needs one uncached token per row to produce the first new token from.
        """
        return self._common_prefix([item.prompt[:-1] for item in chunk])

    @contextlib.contextmanager
    def _adapters_for(self, names: list[str]) -> Iterator[list[str] | None]:
        """Make one adapter (or the bare base) active, or yield ``names`` for a mixed batch.

        Measured on the tiny model: peft's per-row ``adapter_names`` path costs
        ~25% more than an active adapter when all rows share one, and beats two
        separate calls when they do not (on a GPU by more: base weights are read once).
        """
        if not isinstance(self.model, PeftModel):
            yield None
        elif len(set(names)) > 1:
            yield names
        elif names[0] == BASE:
            with self.model.disable_adapter():
                yield None
        else:
            self.model.set_adapter(names[0], inference_mode=True)
            yield None

    def _prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mixed: list[str] | None,
        shared: int = 0,
    ) -> Cache:
        """The KV cache of the prompts, with the position ids ``generate`` would use.

        With ``shared > 0`` the first ``shared`` columns (identical in every row,
        no padding) run once per adapter, their cache is replicated to the
        rows, and the rest runs on top of it: the same keys and values as one
        full prefill, without computing the common prefix once per row.
        """
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if shared == 0:
            return self._forward(input_ids, attention_mask, position_ids, mixed, None)
        # One prefix row per adapter present, in order of first appearance.
        adapters = list(dict.fromkeys(mixed)) if mixed else [None]
        prefix_rows = len(adapters)
        cache = self._forward(
            input_ids[:1, :shared].expand(prefix_rows, -1),
            attention_mask[:1, :shared].expand(prefix_rows, -1),
            position_ids[:1, :shared].expand(prefix_rows, -1),
            adapters if mixed else None,
            None,
        )
        which = [adapters.index(name) for name in mixed] if mixed else [0] * len(input_ids)
        cache.batch_select_indices(torch.tensor(which, device=input_ids.device))
        if input_ids.shape[1] == shared:  # every suffix is its last token alone
            return cache
        return self._forward(
            input_ids[:, shared:], attention_mask, position_ids[:, shared:], mixed, cache
        )

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        mixed: list[str] | None,
        cache: Cache | None,
    ) -> Cache:
        """One prefill forward pass (only the last position's logits); returns its cache.

        ``attention_mask`` covers the cached columns too, so padding between a
        shared prefix and a suffix stays masked.
        """
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **({"adapter_names": mixed} if mixed else {}),
        )
        return out.past_key_values

    def _processors(
        self, rows: list[_Item], sample_index: list[int], sampling: Sampling
    ) -> LogitsProcessorList:
        """Grammar masks first, then temperature / top-p, then the per-row seeded draw."""
        processors = LogitsProcessorList()
        if any(item.constraint for item in rows):
            processors.append(
                GrammarLogitsProcessor([item.constraint for item in rows], sampling.max_new_tokens)
            )
        if sampling.temperature > 0:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
            seeds = [
                derive_seed(item.request.sampling.seed, j)
                for item, j in zip(rows, sample_index, strict=True)
            ]
            processors.append(_SeededSampler(seeds))
        return processors

    def _collect(
        self,
        chunk: list[_Item],
        ns: list[int],
        new_tokens: list[list[int]],
        logprobs: list[list[_Logprob]] | None = None,
    ) -> list[Generation]:
        """Texts up to the end-of-turn token, reasons and token counts (and the logprobs of
        the text's tokens, where asked), per request."""
        stops = set(self.stop_token_ids)
        generations = []
        rows = iter(range(len(new_tokens)))
        for item, n in zip(chunk, ns, strict=True):
            generation = Generation(texts=[], prompt_tokens=len(item.prompt))
            top = item.request.sampling.logprobs
            wanted = logprobs if top is not None else None
            if wanted is not None:
                generation.logprobs = []
            for row in (next(rows) for _ in range(n)):
                tokens = new_tokens[row]
                end = next((k for k, t in enumerate(tokens) if t in stops), None)
                text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
                generation.texts.append(text)
                generation.finish_reasons.append("length" if end is None else "stop")
                generation.completion_tokens += len(tokens) if end is None else end + 1
                if wanted is not None and generation.logprobs is not None:
                    kept = wanted[row][: len(tokens) if end is None else end]
                    generation.logprobs.append([self._token_logprob(lp, top or 0) for lp in kept])
            generations.append(generation)
        return generations

    def _token_logprob(self, logprob: _Logprob, top: int) -> TokenLogprob:
        token, value, alternatives = logprob
        decode = self.tokenizer.decode
        return TokenLogprob(
            decode([token]), value, tuple((decode([t]), v) for t, v in alternatives[:top])
        )


_Logprob = tuple[int, float, list[tuple[int, float]]]  # token, its logprob, the top ones


def _record(
    logprobs: list[list[_Logprob]],
    rows: Sequence[int],
    done: Sequence[bool],
    raw: torch.Tensor,
    ids: torch.Tensor,
    top: int,
) -> None:
    """Append each unfinished row's chosen token, its log-probability and the ``top``
    likeliest tokens of ``raw`` (the model's log-softmax) to its list."""
    chosen = raw.gather(1, ids[:, None]).squeeze(1).tolist()
    best = raw.topk(top, dim=-1) if top else None
    best_ids = best.indices.tolist() if best is not None else [[] for _ in rows]
    best_values = best.values.tolist() if best is not None else [[] for _ in rows]
    for k, row in enumerate(rows):
        if not done[row]:
            pairs = list(zip(best_ids[k], best_values[k], strict=True))
            logprobs[row].append((int(ids[k]), float(chosen[k]), pairs))


# --- the shared KV cache of the decode loop -----------------------------------------------


class _Part:
    """A shared part of the decode cache: keys and values per group, and each row's group.

    Rows read their group's keys through one batched matmul: the queries of a
    group's rows are laid side by side (a ``[groups, width]`` grid of rows), so
    each group's keys are read once however many rows read them.
    """

    def __init__(self, kv: KV, bias: torch.Tensor | None, groups: list[int]) -> None:
        self.kv = kv
        self.bias = bias  # [groups, tokens], -inf on padding
        self.length = kv[0][0].shape[2]
        self.ids = list(range(kv[0][0].shape[0]))  # the group each row of ``kv`` started as
        self.regroup(groups)

    def regroup(self, groups: list[int]) -> None:
        """Rows now read ``groups`` (numbered as at the start).

        Groups no row reads are dropped once they are half the part: dropping
        copies the rest, computing over them costs a matmul row each step.
        """
        used = sorted(set(groups))
        if 2 * len(used) <= len(self.ids):
            where = {group: k for k, group in enumerate(self.ids)}
            index = torch.tensor([where[group] for group in used], device=self.kv[0][0].device)
            self.kv = [(key[index], value[index]) for key, value in self.kv]
            self.bias = None if self.bias is None else self.bias[index]
            self.ids = used
        where = {group: k for k, group in enumerate(self.ids)}
        groups = [where[group] for group in groups]
        slots, counts = [], Counter[int]()
        for group in groups:
            slots.append(counts[group])
            counts[group] += 1
        self.groups = len(self.ids)
        self.width = max(counts.values())
        self.grid: torch.Tensor | None = None  # None: row k reads group k, or all read group 0
        if groups != list(range(self.groups)) and self.groups > 1:
            self.grid = torch.tensor(
                [g * self.width + s for g, s in zip(groups, slots, strict=True)],
                device=self.kv[0][0].device,
            )
        self.row_bias = None
        if self.bias is not None:
            rows = torch.tensor(groups, device=self.bias.device)
            self.row_bias = self.bias[rows][:, None, None, :]

    def scores(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        """``q`` ``[rows, kv_heads, group, dim]`` against this part's keys: ``[..., tokens]``."""
        keys = self.kv[layer][0].transpose(-1, -2)
        rows, heads, per, dim = q.shape
        if self.groups == 1:  # every row reads one copy: all queries in one matmul
            flat = q.transpose(0, 1).reshape(1, heads, rows * per, dim)
            out = (flat @ keys).view(heads, rows, per, -1).transpose(0, 1)
        elif self.grid is None:  # row k reads group k
            out = q @ keys
        else:
            grid = q.new_zeros(self.groups * self.width, heads, per, dim)
            grid[self.grid] = q
            grid = self._side_by_side(grid, dim)
            out = self._back(grid @ keys, per)
        return out if self.row_bias is None else out + self.row_bias

    def values(self, layer: int, weights: torch.Tensor) -> torch.Tensor:
        """Attention ``weights`` ``[rows, kv_heads, group, tokens]`` over this part's values."""
        values = self.kv[layer][1]
        rows, heads, per, tokens = weights.shape
        if self.groups == 1:
            flat = weights.transpose(0, 1).reshape(1, heads, rows * per, tokens)
            return (flat @ values).view(heads, rows, per, -1).transpose(0, 1)
        if self.grid is None:
            return weights @ values
        grid = weights.new_zeros(self.groups * self.width, heads, per, tokens)
        grid[self.grid] = weights
        return self._back(self._side_by_side(grid, tokens) @ values, per)

    def _side_by_side(self, grid: torch.Tensor, last: int) -> torch.Tensor:
        """``[groups * width, heads, per, last]`` -> ``[groups, heads, width * per, last]``."""
        heads, per = grid.shape[1], grid.shape[2]
        grid = grid.view(self.groups, self.width, heads, per, last).transpose(1, 2)
        return grid.reshape(self.groups, heads, self.width * per, last)

    def _back(self, out: torch.Tensor, per: int) -> torch.Tensor:
        """Inverse of :meth:`_side_by_side`, then each row's own slot."""
        heads, last = out.shape[1], out.shape[-1]
        out = out.view(self.groups, heads, self.width, per, last).transpose(1, 2)
        return out.reshape(self.groups * self.width, heads, per, last)[self.grid]


class _Cascade:
    """The decode loop's KV cache, and the attention over it (see the module docstring).

    Passed to the model as its attention mask, so every attention layer finds
    it; :func:`_cascade_attention` hands each layer's query, key and value here.
    """

    def __init__(self, prefix: KV | None, rests: list[KV | None], lengths: list[int]) -> None:
        self._prefix_kv = prefix
        self._rests_kv: KV | None = None
        self._rests_bias: torch.Tensor | None = None
        width = max(lengths)
        if width:
            sample = next(rest for rest in rests if rest is not None)
            _, heads, _, dim = sample[0][0].shape
            like = sample[0][0]
            keys = [like.new_zeros(len(rests), heads, width, dim) for _ in sample]
            values = [like.new_zeros(len(rests), heads, width, dim) for _ in sample]
            for p, rest in enumerate(rests):
                if rest is not None:
                    for layer, (key, value) in enumerate(rest):
                        keys[layer][p, :, : lengths[p]] = key[0]
                        values[layer][p, :, : lengths[p]] = value[0]
            self._rests_kv = list(zip(keys, values, strict=True))
            bias = torch.zeros(len(rests), width, dtype=torch.float32, device=like.device)
            for p, length in enumerate(lengths):
                bias[p, length:] = float("-inf")
            self._rests_bias = bias.to(like.dtype)
        self.parts: list[_Part] = []
        self.generated: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        self.step = 0

    def start(self, adapters: list[int], prompts: list[int], max_new_tokens: int) -> None:
        """Rows read prefix ``adapters[r]`` and rest ``prompts[r]``; up to ``max_new_tokens``."""
        self._adapters, self._prompts = adapters, prompts
        if self._prefix_kv is not None:
            self.parts.append(_Part(self._prefix_kv, None, adapters))
        if self._rests_kv is not None:
            self.parts.append(_Part(self._rests_kv, self._rests_bias, prompts))
        self.capacity = max_new_tokens
        self.generated = []

    def keep(self, rows: torch.Tensor) -> None:
        """Only batch rows ``rows`` go on decoding: drop the others' caches."""
        kept = rows.tolist()
        self._adapters = [self._adapters[k] for k in kept]
        self._prompts = [self._prompts[k] for k in kept]
        groups = [self._adapters, self._prompts]
        parts = iter(self.parts)
        if self._prefix_kv is not None:
            next(parts).regroup(groups[0])
        if self._rests_kv is not None:
            next(parts).regroup(groups[1])
        filled = self.step + 1
        for layer, pair in enumerate(self.generated):
            if pair is None:
                continue
            key, value = pair
            new_key = key.new_empty(len(kept), *key.shape[1:])
            new_value = value.new_empty(len(kept), *value.shape[1:])
            new_key[:, :, :filled] = key[rows, :, :filled]
            new_value[:, :, :filled] = value[rows, :, :filled]
            self.generated[layer] = (new_key, new_value)

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float | None,
    ) -> torch.Tensor:
        """Attention output ``[rows, 1, heads, dim]`` of one decode step of ``layer``."""
        rows, heads, _, dim = query.shape
        kv_heads = key.shape[1]
        while len(self.generated) <= layer:
            self.generated.append(None)
        if self.generated[layer] is None:
            shape = (rows, kv_heads, self.capacity, dim)
            self.generated[layer] = (key.new_empty(shape), value.new_empty(shape))
        own_keys, own_values = self.generated[layer]  # type: ignore[misc]
        t = self.step
        own_keys[:, :, t] = key[:, :, 0]
        own_values[:, :, t] = value[:, :, 0]
        scale = dim**-0.5 if scaling is None else scaling
        q = (query * scale).reshape(rows, kv_heads, heads // kv_heads, dim)
        scores = [part.scores(layer, q) for part in self.parts]
        scores.append(q @ own_keys[:, :, : t + 1].transpose(-1, -2))
        joined = torch.cat(scores, dim=-1) if len(scores) > 1 else scores[0]
        # The softmax in float32 at least (half precision upcast, as eager attention does);
        # float64 stays float64.
        upcast = torch.promote_types(joined.dtype, torch.float32)
        weights = joined.softmax(dim=-1, dtype=upcast).to(value.dtype)
        pieces = weights.split([part.length for part in self.parts] + [t + 1], dim=-1)
        out = pieces[-1] @ own_values[:, :, : t + 1]
        for part, piece in zip(self.parts, pieces, strict=False):
            out = out + part.values(layer, piece)
        return out.reshape(rows, 1, heads, dim)


def _cascade_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface, for the decode loop: the mask is the cache."""
    if not isinstance(attention_mask, _Cascade):
        raise TypeError("the cascade attention runs only inside LocalBackend's decode loop")
    return attention_mask.attend(module.layer_idx, query, key, value, scaling), None


AttentionInterface.register(CASCADE, _cascade_attention)


def _cascade_supported(model: PreTrainedModel) -> bool:
    """Whether the decode loop can drive ``model``: Qwen2-family, every layer full attention."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return config.model_type == "qwen2" and all(t == "full_attention" for t in layer_types)


def _buckets(lengths: list[int], call_cost: int) -> list[list[int]]:
    """Indices of ``lengths`` cut into right-padded batches of least total cost.

    A batch costs its rows times its longest row, plus ``call_cost``; sorted
    longest first, the best cut is a dynamic programme over where batches start.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = [0] + [0] * len(order)  # best[j]: cost of the first j rows
    start = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        best[j], start[j] = min(
            (best[i] + (j - i) * lengths[order[i]] + call_cost, i) for i in range(j)
        )
    cuts, j = [], len(order)
    while j:
        cuts.append(order[start[j] : j])
        j = start[j]
    return cuts[::-1]


def _cat(first: KV, second: KV) -> KV:
    return [
        (torch.cat([k1, k2], dim=2), torch.cat([v1, v2], dim=2))
        for (k1, v1), (k2, v2) in zip(first, second, strict=True)
    ]


class _Chooser:
    """The next token of each row, as ``generate`` with :meth:`LocalBackend._processors` picks it.

    Greedy rows take the argmax; sampled rows go through temperature and
    top-p, then the seeded inverse-CDF draw of :class:`_SeededSampler` (the
    same uniforms from the same per-row generators), without writing the
    one-hot scores back for an argmax to read.
    """

    def __init__(self, sampling: Sampling, seeds: Sequence[int | None]) -> None:
        self.greedy = sampling.temperature == 0
        self.temperature = sampling.temperature
        self.top_p = TopPLogitsWarper(sampling.top_p) if sampling.top_p < 1.0 else None
        self._uniforms = _RowUniforms(seeds)

    def choose(self, scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Token per row of ``scores``; its row ``k`` is original row ``rows[k]``.

        A row whose grammar allows one token (a fixed phrase, a closing fence:
        most of a wrapped-up policy answer) takes it without the sort and the
        two passes over the vocabulary: temperature, top-p and the draw all
        keep that token whatever the uniform. Its uniform is still drawn, so
        every row's generator advances as in the reference.
        """
        if self.greedy:
            return scores.argmax(dim=-1)
        uniforms = self._uniforms.draw(rows).to(scores.device)
        chosen = scores.argmax(dim=-1)
        free = (torch.isfinite(scores).sum(dim=-1) != 1).nonzero().squeeze(1)
        if len(free) == 0:
            return chosen
        if len(free) < len(scores):
            scores, uniforms = scores[free], uniforms[free]
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_p is not None:
            scores = self.top_p(None, scores)  # type: ignore[arg-type]
        chosen[free] = _draw(scores, uniforms)
        return chosen


class _RowUniforms:
    """One CPU generator per row, seeded by the row's seed (``None``: torch's global one).

    Why per row: a row's samples then depend on its seed alone, not on the batch it
    shares; both decode paths (:class:`_Chooser`, :class:`_SeededSampler`) draw here,
    so they take the same uniforms.
    """

    def __init__(self, seeds: Sequence[int | None]) -> None:
        self._generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]

    def draw(self, rows: Iterable[int]) -> torch.Tensor:
        """One float64 uniform for each of ``rows``, advancing only their generators."""
        return torch.cat(
            [torch.rand(1, generator=self._generators[r], dtype=torch.float64) for r in rows]
        )


def _draw(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The first token whose CDF exceeds ``u`` (zero-probability tokens never do), per row."""
    cdf = scores.double().softmax(dim=-1).cumsum(dim=-1)
    chosen = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), right=True)
    return chosen.clamp_(max=scores.shape[-1] - 1).squeeze(1)


class _SeededSampler(LogitsProcessor):
    """Samples each row with its own generator, then leaves only that token for argmax.

    transformers samples all rows from one global generator, so a row's draw
    would depend on the other rows; here it depends on its seed alone. Each
    row takes one uniform per step from its CPU generator (cheap, and the same
    on any device) and inverts the row's CDF; the CDF is built in float64 so a
    152k-token vocabulary sums without visible rounding.
    """

    def __init__(self, seeds: Sequence[int | None]) -> None:
        self._uniforms = _RowUniforms(seeds)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniforms = self._uniforms.draw(range(len(scores))).to(scores.device)
        chosen = _draw(scores, uniforms).unsqueeze(1)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen, 0.0)


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


def _stop_token_ids(model: PreTrainedModel, eos_token_id: int | None) -> list[int]:
    """End-of-turn ids: the generation config's eos (Qwen: im_end, endoftext), the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in [*ids, eos_token_id] if i is not None))


def _with_adapters(
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
