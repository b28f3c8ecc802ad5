"""Seeded sampling: each row's draw depends on its own seed, not on the batch it shares.

**Reproducibility.** Sample ``j`` of a request with seed ``s`` is drawn with its own
``torch.Generator`` seeded ``derive_seed(s, j)``, so it depends only on the model, the
request and ``(s, j)``, not on the other requests of the batch, its order or chunking, nor
on ``n``. Exact on CPU in fp32 up to float rounding (which rows share a matmul changes the
last bits of the logits, so a near-tied token may rarely go the other way); on a GPU
kernels chosen by batch shape do the same. Greedy requests (temperature 0) need no seed.
Requests without a seed draw from torch's global generator.

Both decode paths of :class:`~websynthesis.backends.local.LocalBackend` draw here: the
cascade loop through :class:`Chooser`, transformers' ``generate`` through
:func:`logits_processors` (whose last step is :class:`SeededSampler`); they take the same
uniforms from the same per-row generators, so they pick the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from websynthesis.backends.constraints import Constraint, GrammarLogitsProcessor
from websynthesis.backends.types import Sampling


def logits_processors(
    constraints: Sequence[Constraint | None], seeds: Sequence[int | None], sampling: Sampling
) -> LogitsProcessorList:
    """For ``generate``: grammar masks first, then temperature / top-p, then the per-row
    seeded draw (row ``k`` follows ``constraints[k]`` and draws with ``seeds[k]``)."""
    processors = LogitsProcessorList()
    if any(constraints):
        processors.append(GrammarLogitsProcessor(list(constraints), sampling.max_new_tokens))
    if sampling.temperature > 0:
        if sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
        processors.append(SeededSampler(seeds))
    return processors


class Chooser:
    """The next token of each row, as ``generate`` with :func:`logits_processors` picks it.

    Greedy rows take the argmax; sampled rows go through temperature and
    top-p, then the seeded inverse-CDF draw of :class:`SeededSampler` (the
    same uniforms from the same per-row generators), without writing the
    one-hot scores back for an argmax to read.
    """

    def __init__(self, sampling: Sampling, seeds: Sequence[int | None]) -> None:
        self.greedy = sampling.temperature == 0
        self.temperature = sampling.temperature
        self.top_p = TopPLogitsWarper(sampling.top_p) if sampling.top_p < 1.0 else None
        self._uniforms = RowUniforms(seeds)

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


class RowUniforms:
    """One CPU generator per row, seeded by the row's seed (``None``: torch's global one).

    Why per row: a row's samples then depend on its seed alone, not on the batch it
    shares; both decode paths (:class:`Chooser`, :class:`SeededSampler`) draw here,
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


class SeededSampler(LogitsProcessor):
    """Samples each row with its own generator, then leaves only that token for argmax.

    transformers samples all rows from one global generator, so a row's draw
    would depend on the other rows; here it depends on its seed alone. Each
    row takes one uniform per step from its CPU generator (cheap, and the same
    on any device) and inverts the row's CDF; the CDF is built in float64 so a
    152k-token vocabulary sums without visible rounding.
    """

    def __init__(self, seeds: Sequence[int | None]) -> None:
        self._uniforms = RowUniforms(seeds)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniforms = self._uniforms.draw(range(len(scores))).to(scores.device)
        chosen = _draw(scores, uniforms).unsqueeze(1)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen, 0.0)
