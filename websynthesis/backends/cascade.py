"""The local backend's own decode loop, over a KV cache whose shared keys are read once.

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

The prefilled parts come from :mod:`websynthesis.backends.prefill`; tokens are picked by
:class:`~websynthesis.backends.sampling.Chooser`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel

from websynthesis.backends.constraints import BatchGrammarMasks, Constraint
from websynthesis.backends.sampling import Chooser
from websynthesis.backends.types import Sampling

CASCADE = "websynthesis_cascade"  # the attention implementation of the decode loop
# Finished rows leave the decode batch once they are 1/COMPACT_WHEN of it: compacting copies
# the rows' generated keys, decoding a finished row costs its share of every step.
COMPACT_WHEN = 8

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values of every layer, each ``[batch, kv_heads, tokens, head_dim]``."""

Logprob = tuple[int, float, list[tuple[int, float]]]  # token, its logprob, the top ones


def decode(model: torch.nn.Module, config: PretrainedConfig, cohort: Cohort) -> None:
    """Decode ``cohort``'s rows to their end-of-turn or the budget; finished rows leave the
    batch. ``config`` is the base model's, whose attention is the cascade's while the loop
    runs; the tokens (and logprobs) are the cohort's."""
    with cascade_attention_on(config):
        while not cohort.finished:
            cohort.advance(
                forward(model, cohort.ids, cohort.positions, cohort.cascade, cohort.names)
            )


def forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    positions: torch.Tensor,
    mask: Any,
    names: list[str] | None,
) -> torch.Tensor:
    """One decode step's float logits ``[rows, vocab]``: token ``ids[k]`` at ``positions[k]``,
    attention through ``mask`` (a :class:`Cascade`, or several side by side)."""
    output = model(
        input_ids=ids[:, None],
        position_ids=positions[:, None],
        attention_mask={"full_attention": mask},
        use_cache=False,
        **({"adapter_names": names} if names else {}),
    )
    return output.logits[:, -1].float()


class Cohort:
    """The rows of one chunk decoding together over one :class:`Cascade`.

    Why a class: the decode loop of one chunk (:func:`decode`) and the continuous loop
    of several chunks joining and leaving (:mod:`~websynthesis.backends.continuous`) take
    the same steps; a cohort keeps what a step changes (each row's tokens, the live rows,
    their next token and position, its own step count) and does everything after the
    model's forward: the grammar's mask, the choice, the logprobs, the finished rows.

    Row ``k`` continues ``prompts[k]`` (its last token not yet prefilled) under
    ``constraints[k]``, draws with ``seeds[k]`` and wants ``wanted[k]`` top logprobs
    (``None``: none); with a request for logprobs, each row's tokens also get their
    log-probabilities under the model (before the grammar's mask and the temperature) and
    the cohort's largest ``top`` alternatives. ``names`` are each row's peft adapter, for a
    mixed batch (``None``: the adapter the caller made active).
    """

    def __init__(
        self,
        cascade: Cascade,
        prompts: Sequence[Sequence[int]],
        constraints: Sequence[Constraint | None],
        seeds: Sequence[int | None],
        wanted: Sequence[int | None],
        sampling: Sampling,
        names: list[str] | None,
        stop_token_ids: Sequence[int],
        device: torch.device,
    ) -> None:
        self.cascade = cascade
        self.names = names  # each live row's adapter (peft's adapter_names), or None
        self.stops = set(stop_token_ids)
        self.top = max((k for k in wanted if k is not None), default=None)
        self.logprobs: list[list[Logprob]] | None = (
            None if self.top is None else [[] for _ in prompts]
        )
        self.grammar = None
        if any(constraints):
            self.grammar = BatchGrammarMasks(list(constraints), sampling.max_new_tokens)
        self.chooser = Chooser(sampling, seeds)
        self.max_new_tokens = sampling.max_new_tokens
        self.rows = list(range(len(prompts)))  # the original row of each batch row
        self.tokens: list[list[int]] = [[] for _ in self.rows]
        self.done = [False] * len(self.rows)
        self.ids = torch.tensor([prompt[-1] for prompt in prompts], device=device)
        self.positions = torch.tensor([len(prompt) - 1 for prompt in prompts], device=device)
        self.last: list[int] | None = None
        self.step = 0  # the cascade's too: the cohort keeps them equal
        cascade.step = 0
        self.row_steps = 0  # rows carried, summed over the steps taken
        self.finished = False

    def advance(self, logits: torch.Tensor) -> None:
        """Take one step's tokens from ``logits`` (the live rows', in order)."""
        rows = self.rows
        self.row_steps += len(rows)
        raw = logits.log_softmax(dim=-1) if self.logprobs is not None else None
        if self.grammar is not None:
            self.grammar.mask(logits, rows, self.last)
        ids = self.chooser.choose(logits, rows)
        last = ids.tolist()
        if self.logprobs is not None and raw is not None:
            record_logprobs(self.logprobs, rows, self.done, raw, ids, self.top or 0)
        done, tokens = self.done, self.tokens
        for row, token in zip(rows, last, strict=True):
            if not done[row]:
                tokens[row].append(token)
                done[row] = token in self.stops
        finished = sum(done[row] for row in rows)
        if finished == len(rows) or self.step + 1 == self.max_new_tokens:
            self.finished = True
            return
        self.ids, self.positions, self.last = ids, self.positions + 1, last
        if finished and COMPACT_WHEN * finished >= len(rows):
            keep = [k for k, row in enumerate(rows) if not done[row]]
            index = torch.tensor(keep, device=ids.device)
            self.cascade.keep(index)
            self.ids, self.positions = self.ids[index], self.positions[index]
            self.rows = [rows[k] for k in keep]
            self.last = [last[k] for k in keep]
            self.names = [self.names[k] for k in keep] if self.names else None
        self.step += 1
        self.cascade.step = self.step  # where the next step's own keys go


@contextlib.contextmanager
def cascade_attention_on(config: PretrainedConfig) -> Iterator[None]:
    """The model's attention layers call :func:`cascade_attention` while this is open
    (``config``: the base model's), and what they called before once it closes."""
    previous = config._attn_implementation
    config._attn_implementation = CASCADE
    try:
        yield
    finally:
        config._attn_implementation = previous


def record_logprobs(
    logprobs: list[list[Logprob]],
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


class Cascade:
    """The decode loop's KV cache, and the attention over it (see the module docstring).

    Passed to the model as its attention mask, so every attention layer finds
    it; :func:`cascade_attention` hands each layer's query, key and value here.
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


class Cascades:
    """Several cohorts' caches side by side in one forward (the continuous decode).

    Why: one forward reads the weights once for every running row, whichever chunk it came
    from; attention is each row's own anyway, so each layer's rows are split by cohort and
    each part attends over its own :class:`Cascade`.
    """

    def __init__(self, cohorts: Sequence[Cohort], sizes: list[int]) -> None:
        self.cascades = [cohort.cascade for cohort in cohorts]
        self.sizes = sizes

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scaling: float | None,
    ) -> torch.Tensor:
        """:meth:`Cascade.attend` of each cohort's rows, joined in order."""
        parts = zip(
            self.cascades,
            query.split(self.sizes),
            key.split(self.sizes),
            value.split(self.sizes),
            strict=True,
        )
        return torch.cat([c.attend(layer, q, k, v, scaling) for c, q, k, v in parts])


def cascade_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface, for the decode loop: the mask is the cache."""
    if not isinstance(attention_mask, Cascade | Cascades):
        raise TypeError("the cascade attention runs only inside LocalBackend's decode loop")
    return attention_mask.attend(module.layer_idx, query, key, value, scaling), None


AttentionInterface.register(CASCADE, cascade_attention)


def cascade_supported(model: PreTrainedModel) -> bool:
    """Whether the decode loop can drive ``model``: Qwen2-family, every layer full attention."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return config.model_type == "qwen2" and all(t == "full_attention" for t in layer_types)
