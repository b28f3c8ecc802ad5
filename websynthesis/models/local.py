"""A :class:`~websynthesis.models.types.Backend` that runs one transformers model in-process.

One base model serves several roles through named LoRA adapters (policy,
world model): a request's ``model`` names its adapter, ``None`` the base.

How a batch of requests becomes ``generate`` calls:

* Requests are rendered with the model's chat template (generation prompt on),
  checked one by one (unknown adapter, grammar that does not compile, prompt
  too long...: that request's ``error``), then grouped by what ``generate``
  fixes per call: temperature, top_p and max_new_tokens. Adapters, seeds,
  ``n`` and grammars may differ inside a group; seeds and grammars get
  per-row logits processors.
* A group is cut into chunks of at most ``max_batch_size`` rows (samples),
  prompts of similar length together, left-padded with an attention mask.
  A chunk runs with its adapter active when all its rows share one, and as
  peft's mixed batch (``adapter_names=``, one per row) when they do not: one
  call reads the base weights once for all rows, which is what decoding is
  bound by on a GPU.
* **One prefill for n samples.** Each chunk's prompts (all but their last
  token) are run once into a KV cache; the cache rows are then repeated
  ``n`` times per prompt (``DynamicCache.batch_select_indices``) and all
  samples decode together. ``num_return_sequences`` would copy the prompt
  before the prefill and compute it ``n`` times.
* **One prefill for a shared prefix.** Requests of one role open with the
  same system prompt and few-shot turns (MCTS: ~75 % of a policy prompt).
  When a chunk's prompts share at least ``share_prefix_min_tokens`` leading
  tokens, that prefix is run once (once per adapter in a mixed chunk: KV
  computed under one adapter is never reused under another), its cache
  replicated to every row, and only each row's suffix is prefilled after it.
  The suffixes are left-padded *between* the prefix and the suffix, with
  zeros in the attention mask there and position ids that count real tokens
  only, so every row sees exactly the keys, values and positions it would alone.
* Rows stop at the end-of-turn token(s) (``<|im_end|>`` for Qwen chat models),
  which the returned text excludes; ``finish_reasons`` is ``stop`` or ``length``.

**Reproducibility.** Sample ``j`` of a request with seed ``s`` is drawn with
its own ``torch.Generator`` seeded ``derive_seed(s, j)``, so it depends only on
the model, the request and ``(s, j)``, not on the other requests of the batch,
its order or chunking, nor on ``n``. Exact on CPU in fp32; on a GPU, kernels
chosen by batch shape may change low bits of the logits and so, rarely, a
near-tied token. Greedy requests (temperature 0) need no seed. Requests
without a seed draw from torch's global generator.

A failing chunk (out of memory, a kernel error) is retried request by request,
so one bad request fails alone; ``stats`` counts errors by kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import Cache
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.models.grammar import Constraint, GrammarCompiler, GrammarLogitsProcessor
from websynthesis.models.loading import load_model, load_tokenizer, resolve_model_path
from websynthesis.models.types import Generation, GenerationRequest, Sampling, derive_seed

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's adapter_names entry for "no adapter"


@dataclass
class LocalStats:
    """What the backend did: ``generate`` calls, rows decoded, and errors by kind."""

    generate_calls: int = 0
    rows: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generate_calls": self.generate_calls,
            "rows": self.rows,
            "errors": dict(self.errors),
        }


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
        max_batch_size: most rows (samples, not requests) per ``generate`` call.
        share_prefix: prefill a chunk's common prompt prefix once (see the module
            docstring); off only to compare against, outputs are the same.
        share_prefix_min_tokens: shortest common prefix worth a separate prefill
            call; below it the extra call costs more than the tokens it saves.
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
    ) -> None:
        path = resolve_model_path(str(model_path))
        base = load_model(path, dtype=dtype, attn_implementation=attn_implementation, device=device)
        self._setup(path, base, load_tokenizer(path), adapters, max_batch_size)
        self.share_prefix = share_prefix
        self.share_prefix_min_tokens = share_prefix_min_tokens

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
    ) -> LocalBackend:
        """Serve a model already in memory (a benchmark's random one, a training run's).

        ``name`` stands for ``model_path`` in :attr:`cache_identity`. The
        model's generation config is replaced (see ``__init__``); the tokenizer
        is only read, and needs a chat template and a pad token.
        """
        backend = cls.__new__(cls)
        backend._setup(name, model, tokenizer, adapters, max_batch_size)
        backend.share_prefix = share_prefix
        backend.share_prefix_min_tokens = share_prefix_min_tokens
        return backend

    def _setup(
        self,
        model_path: str,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapters: Mapping[str, str | None] | None,
        max_batch_size: int,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if tokenizer.chat_template is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a chat template and a pad token")
        self.model_path = model_path
        self.adapters = {name: str(path) for name, path in (adapters or {}).items() if path}
        self.max_batch_size = max_batch_size
        # Public and mutable: the benchmark flips sharing on and off on one loaded model.
        self.share_prefix = True
        self.share_prefix_min_tokens = 32
        self.tokenizer = tokenizer
        self.stop_token_ids = _stop_token_ids(base, self.tokenizer.eos_token_id)
        # Sampling is the request's alone: no top_k / repetition penalty from the checkpoint.
        base.generation_config = GenerationConfig(
            eos_token_id=self.stop_token_ids, pad_token_id=self.tokenizer.pad_token_id
        )
        self.context_length = base.config.max_position_embeddings
        self.vocab_size = base.config.vocab_size
        self.model = _with_adapters(base, self.adapters)
        self.device = base.device
        self.stats = LocalStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalBackend(model_path={self.model_path!r}, adapters={sorted(self.adapters)})"

    @property
    def cache_identity(self) -> dict[str, Any]:
        """What makes this backend's answers differ from another's (see ``cache.py``)."""
        adapters = dict(sorted(self.adapters.items()))
        return {"kind": "local", "model": self.model_path, "adapters": adapters}

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
            items.sort(key=lambda item: len(item.prompt))
            for chunk in self._chunks(items):
                for item, generation in zip(chunk, self._run_safely(chunk), strict=True):
                    results[item.index] = generation
        return [r for r in results if r is not None]

    def _check(self, index: int, request: GenerationRequest) -> _Item:
        """Render and validate one request; raises :class:`_Rejected` with its error."""
        s = request.sampling
        if s.n < 1 or s.max_new_tokens < 1 or s.temperature < 0 or not 0 < s.top_p <= 1:
            raise _Rejected("bad_request", f"invalid sampling {s}")
        if request.model is not None and request.model not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise _Rejected("not_found", f"unknown adapter {request.model!r} (loaded: {known})")
        try:
            prompt = self.tokenizer.apply_chat_template(
                list(request.messages), add_generation_prompt=True, tokenize=True, return_dict=False
            )
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

    @torch.inference_mode()
    def _run(self, chunk: list[_Item]) -> list[Generation]:
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
        row_items = [item for item, n in zip(chunk, ns, strict=True) for _ in range(n)]
        sample_index = [j for n in ns for j in range(n)]
        with self._adapters_for([item.adapter for item in chunk]) as mixed:
            cache = self._prefill(input_ids[:, :-1], attention_mask[:, :-1], mixed, shared)
            cache.batch_select_indices(rows)
            self.stats.generate_calls += 1
            self.stats.rows += len(row_items)
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

    def _shared_prefix_length(self, chunk: list[_Item]) -> int:
        """Tokens every prompt of ``chunk`` opens with, or 0 when too few to be worth a call.

        Each row keeps at least its last token out of the prefix: ``generate``
        needs one uncached token per row to produce the first new token from.
        """
        if not self.share_prefix:
            return 0
        prompts = [item.prompt for item in chunk]
        limit = min(len(p) for p in prompts) - 1
        columns = enumerate(zip(*prompts, strict=False))  # lengths differ: up to the shortest
        length = next((k for k, col in columns if k == limit or len(set(col)) > 1), limit)
        return length if length >= self.share_prefix_min_tokens else 0

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
        self, chunk: list[_Item], ns: list[int], new_tokens: list[list[int]]
    ) -> list[Generation]:
        """Texts up to the end-of-turn token, reasons and token counts, per request."""
        stops = set(self.stop_token_ids)
        generations = []
        rows = iter(new_tokens)
        for item, n in zip(chunk, ns, strict=True):
            generation = Generation(texts=[], prompt_tokens=len(item.prompt))
            for tokens in (next(rows) for _ in range(n)):
                end = next((k for k, t in enumerate(tokens) if t in stops), None)
                text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
                generation.texts.append(text)
                generation.finish_reasons.append("length" if end is None else "stop")
                generation.completion_tokens += len(tokens) if end is None else end + 1
            generations.append(generation)
        return generations


class _SeededSampler(LogitsProcessor):
    """Samples each row with its own generator, then leaves only that token for argmax.

    transformers samples all rows from one global generator, so a row's draw
    would depend on the other rows; here it depends on its seed alone. Each
    row takes one uniform per step from its CPU generator (cheap, and the same
    on any device) and inverts the row's CDF; the CDF is built in float64 so a
    152k-token vocabulary sums without visible rounding.
    """

    def __init__(self, seeds: Sequence[int | None]) -> None:
        self._generators = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniforms = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64) for g in self._generators]
        ).to(scores.device)
        cdf = scores.double().softmax(dim=-1).cumsum(dim=-1)
        # The first token whose CDF exceeds u; zero-probability tokens never do.
        chosen = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(1), right=True)
        chosen = chosen.clamp_(max=scores.shape[-1] - 1)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen, 0.0)


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
