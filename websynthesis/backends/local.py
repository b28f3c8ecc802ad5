"""A :class:`~websynthesis.backends.types.Backend` that runs one transformers model in-process.

One base model serves several roles through named LoRA adapters (policy,
world model): a request's ``model`` names its adapter, ``None`` the base.

How a batch of requests becomes model calls:

* Requests are rendered with the model's chat template (generation prompt on)
  and tokenized piece by piece, a piece seen before not again
  (:class:`~websynthesis.backends.prompt_tokens.PromptTokenizer`), checked one
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

How a chunk runs (one module each): its prompts' shared tokens are prefilled once
(:mod:`~websynthesis.backends.prefill`); its rows decode together over a KV cache whose
shared keys are read once, finished rows leaving at once
(:mod:`~websynthesis.backends.cascade`; models whose layers are not all full attention, or
``cascade_decode=False``, take transformers' ``generate`` with the same sampling and
masks); each row draws with its own seed (:mod:`~websynthesis.backends.sampling`), and
grammars mask the logits first (:mod:`~websynthesis.backends.constraints`).

Rows stop at the end-of-turn token(s) (``<|im_end|>`` for Qwen chat models),
which the returned text excludes; ``finish_reasons`` is ``stop`` or ``length``.

Sample ``j`` of a request with seed ``s`` depends only on the model, the request and
``(s, j)``, not on the rest of the batch (see :mod:`~websynthesis.backends.sampling`).

A failing chunk (out of memory, a kernel error) is retried request by request,
so one bad request fails alone; ``stats`` counts errors by kind.

With ``continuous=True`` the chunks do not run call by call: a worker thread keeps one decode
running and chunks join it between steps (:mod:`~websynthesis.backends.continuous`).
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
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.backends.cascade import Cohort, Logprob, cascade_supported, decode
from websynthesis.backends.constraints import Constraint, GrammarCompiler
from websynthesis.backends.continuous import ContinuousDecoder
from websynthesis.backends.loading import (
    adapter_digest,
    load_model,
    load_tokenizer,
    resolve_model_path,
    with_adapters,
)
from websynthesis.backends.prefill import SharedPrefill, prefill_cache
from websynthesis.backends.prompt_tokens import PromptTokenizer
from websynthesis.backends.sampling import logits_processors
from websynthesis.backends.types import (
    Generation,
    GenerationRequest,
    TokenLogprob,
    derive_seed,
)
from websynthesis.counters import Counters

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's adapter_names entry for "no adapter"
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass
class LocalStats(Counters):
    """What the backend did: decode batches, rows decoded, and errors by kind.

    ``generate_calls`` counts decode batches, whichever loop ran them (transformers'
    ``generate`` or the backend's own cascade decode). ``decode_steps`` counts the cascade
    decode's forwards (one per step of a chunk; batching continuously, one per step of the
    shared loop) and ``step_rows`` the rows they carried: ``step_rows / decode_steps`` is the
    mean width of a step. ``joined``: chunks that joined a decode already running.
    """

    generate_calls: int = 0
    rows: int = 0
    decode_steps: int = 0
    step_rows: int = 0
    joined: int = 0
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
        continuous: batch continuously (:mod:`~websynthesis.backends.continuous`): requests
            join a running decode between steps and are answered as their rows end, for
            throughput; off (the default), each call's chunks decode to their end, and a
            run's answers do not depend on when its requests arrived.
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
        continuous: bool = False,
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
            continuous=continuous,
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
        continuous: bool = False,
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
            continuous=continuous,
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
        continuous: bool,
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
        self._cascade_supported = cascade_supported(base)
        if not self._cascade_supported:
            log.info("%s: no cascade decode for this model; decoding with generate", model_path)
        self._adapter_digests = {
            name: adapter_digest(path) for name, path in sorted(self.adapters.items())
        }
        self.model = with_adapters(base, self.adapters)
        self.device = base.device
        self.stats = LocalStats()
        self._lock = threading.Lock()
        self._continuous: ContinuousDecoder | None = None
        self.continuous = continuous

    def __repr__(self) -> str:
        return f"LocalBackend(model_path={self.model_path!r}, adapters={sorted(self.adapters)})"

    @property
    def continuous(self) -> bool:
        """Whether requests join a running decode (see ``continuous`` in the class docstring);
        settable (a benchmark measures both on one loaded model)."""
        return self._continuous is not None

    @continuous.setter
    def continuous(self, on: bool) -> None:
        if on and self._continuous is None:
            self._continuous = ContinuousDecoder(self)
        elif not on and self._continuous is not None:
            self._continuous.close()
            self._continuous = None

    @property
    def concurrent_batches(self) -> int:
        """How many calls a batcher in front should have in flight: one at a time for the
        chunk decode (a call decodes to its end), any number when batching continuously (each
        joins the running decode)."""
        return self.max_batch_size if self.continuous else 1

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
        """Answer ``requests`` in a worker thread (the loop stays free): one batch at a time,
        or, batching continuously, joining the decode that runs."""
        if self._continuous is None:
            return await asyncio.to_thread(self._generate_locked, list(requests))
        futures = self._continuous.submit(list(requests))
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def close(self) -> None:
        """Drop the model and return its device memory."""
        self.continuous = False
        self.__dict__.pop("model", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate_locked(self, requests: list[GenerationRequest]) -> list[Generation]:
        if "model" not in self.__dict__:
            raise RuntimeError("this LocalBackend is closed")
        with self._lock:
            return self._generate(requests)

    def _generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        results, chunks = self._plan(requests)
        for chunk in chunks:
            for item, generation in zip(chunk, self._run_safely(chunk), strict=True):
                results[item.index] = generation
        return [results[index] for index in range(len(requests))]

    def _plan(
        self, requests: list[GenerationRequest]
    ) -> tuple[dict[int, Generation], list[list[_Item]]]:
        """The rejected requests' answers (by index), and the chunks the others decode in."""
        rejected, items = self._checked(requests)
        return rejected, self._chunked(items)

    def _checked(
        self, requests: list[GenerationRequest]
    ) -> tuple[dict[int, Generation], list[_Item]]:
        """The rejected requests' answers (by index), and the others checked."""
        rejected: dict[int, Generation] = {}
        items = []
        for index, request in enumerate(requests):
            try:
                items.append(self._check(index, request))
            except _Rejected as error:
                self.stats.errors[error.kind] += 1
                rejected[index] = Generation(texts=[], error=str(error))
        return rejected, items

    def _chunked(self, items: list[_Item]) -> list[list[_Item]]:
        """``items`` grouped by what a decode loop fixes, neighbours alike, cut into chunks."""
        groups: dict[tuple[float, float, int], list[_Item]] = defaultdict(list)
        for item in items:
            s = item.request.sampling
            groups[(s.temperature, s.top_p, s.max_new_tokens)].append(item)
        chunks = []
        for group in groups.values():
            # Neighbours share prefixes: one adapter's prompts together, then by their tokens.
            group.sort(key=lambda item: (item.adapter, item.prompt))
            chunks += self._chunks(group)
        return chunks

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
        with self._adapters_for([item.adapter for item in chunk]) as mixed:
            cohort, ns = self._cohort(chunk, mixed is not None)
            decode(self.model, self._base_config, cohort)
        self.stats.decode_steps += cohort.step + 1
        self.stats.step_rows += cohort.row_steps
        return self._collect(chunk, ns, cohort.tokens, cohort.logprobs)

    @torch.inference_mode()
    def _cohort(self, chunk: list[_Item], names: bool) -> tuple[Cohort, list[int]]:
        """The chunk's prompt tree prefilled (under the adapters the caller arranged) and its
        rows ready to decode, and each request's row count. ``names``: the rows carry their
        adapter's name (a mixed batch, or a decode shared with other chunks)."""
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
        cascade = self._sharing().tree(
            [(adapter, list(body)) for adapter, body in distinct],
            adapters,
            len(adapters) > 1 and isinstance(self.model, PeftModel),
        )
        cascade.start(
            [adapters.index(item.adapter) for item in row_items],
            row_prompts,
            sampling.max_new_tokens,
        )
        cohort = Cohort(
            cascade,
            [item.prompt for item in row_items],
            [item.constraint for item in row_items],
            _seeds(row_items, sample_index),
            [item.request.sampling.logprobs for item in row_items],
            sampling,
            [item.adapter for item in row_items] if names else None,
            self.stop_token_ids,
            self.device,
        )
        return cohort, ns

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
            cache = prefill_cache(
                self.model, input_ids[:, :-1], attention_mask[:, :-1], mixed, shared
            )
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
                logits_processor=logits_processors(
                    [item.constraint for item in row_items],
                    _seeds(row_items, sample_index),
                    sampling,
                ),
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
        return self._sharing().common_prefix([item.prompt[:-1] for item in chunk])

    def _sharing(self) -> SharedPrefill:
        """The prefill under the backend's sharing settings now (a benchmark flips them)."""
        min_tokens = self.share_prefix_min_tokens if self.share_prefix else None
        prefixes = self._continuous.prefixes if self._continuous is not None else None
        return SharedPrefill(
            self.model, self.device, self.tokenizer.pad_token_id, min_tokens, prefixes
        )

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

    def _collect(
        self,
        chunk: list[_Item],
        ns: list[int],
        new_tokens: list[list[int]],
        logprobs: list[list[Logprob]] | None = None,
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

    def _token_logprob(self, logprob: Logprob, top: int) -> TokenLogprob:
        token, value, alternatives = logprob
        decode = self.tokenizer.decode
        return TokenLogprob(
            decode([token]), value, tuple((decode([t]), v) for t, v in alternatives[:top])
        )


def _seeds(rows: list[_Item], sample_index: list[int]) -> list[int | None]:
    """Each row's sampling seed: its request's, derived for its sample index."""
    return [
        derive_seed(item.request.sampling.seed, j)
        for item, j in zip(rows, sample_index, strict=True)
    ]


def _stop_token_ids(model: PreTrainedModel, eos_token_id: int | None) -> list[int]:
    """End-of-turn ids: the generation config's eos (Qwen: im_end, endoftext), the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in [*ids, eos_token_id] if i is not None))
