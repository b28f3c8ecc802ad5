"""Grammar-constrained decoding in the local backend: compiled grammars and per-row masks.

A request's grammar (an EBNF string, the roles' come from
:mod:`websynthesis.roles.grammar`) is compiled by xgrammar for the model's
tokenizer; each decode step masks every row's logits to what its grammar allows
next, before temperature, top-p and sampling see them.

**Wrap-up.** A grammar may declare ``# wrap-up: <rule> within <n> tokens``: rule
``<rule>`` can be completed from its start in at most ``n`` tokens. When a row has
that many tokens left and is still in its free text, :class:`GrammarLogitsProcessor`
makes it start that rule now (both the full grammar and a matcher for the rule then
constrain it), so the output always matches the grammar and ends inside the budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import xgrammar as xgr
from transformers import LogitsProcessor
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[10:34:52] /project/cpp/x.cc:820: "
_WRAP_UP = re.compile(r"^#\s*wrap-up:\s*(?P<rule>\w+)\s+within\s+(?P<n>\d+)\s+tokens", re.M)


@dataclass(frozen=True)
class Constraint:
    """One request's compiled grammar, and its wrap-up rule if it declares one."""

    grammar: xgr.CompiledGrammar
    wrap_up: xgr.CompiledGrammar | None = None
    reserve: int = 0  # tokens ``wrap_up`` needs at most, end-of-turn included


class GrammarCompiler:
    """Compiles EBNF strings for one tokenizer; xgrammar caches each compiled grammar.

    ``vocab_size`` is the model's (lm_head rows), which may exceed the
    tokenizer's; ``stop_token_ids`` are the tokens that end a turn, which the
    grammar allows exactly when its output is complete.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: Sequence[int]
    ) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self._compiler = xgr.GrammarCompiler(info)

    def compile(self, ebnf: str) -> Constraint:
        """Compile ``ebnf`` (root rule ``root``); raises ValueError when it does not compile."""
        try:
            grammar = self._compiler.compile_grammar(ebnf)
            declared = _WRAP_UP.search(ebnf)
            if declared is None:
                return Constraint(grammar)
            rule = declared["rule"]
            wrap_up = self._compiler.compile_grammar(ebnf, root_rule_name=rule)
        except RuntimeError as error:  # xgrammar reports parse errors as RuntimeError
            message = str(error).strip().splitlines()[-1]
            raise ValueError(_LOG_PREFIX.sub("", message)) from None
        return Constraint(grammar, wrap_up, int(declared["n"]))


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to its own grammar; rows without one are left alone.

    Built for one ``generate`` call (matchers hold per-sequence state). Row
    ``i`` of the batch follows ``constraints[i]``; ``max_new_tokens`` is the
    call's budget, which drives the wrap-up (see the module docstring). Must
    come before temperature / top-p / sampling, so they only see allowed tokens.
    """

    def __init__(self, constraints: Sequence[Constraint | None], max_new_tokens: int) -> None:
        self._constraints = list(constraints)
        self._matchers = [xgr.GrammarMatcher(c.grammar) if c else None for c in constraints]
        self._finishers: list[xgr.GrammarMatcher | None] = [None] * len(constraints)
        self._max_new_tokens = max_new_tokens
        self._step = 0
        vocab_size = next(c.grammar.tokenizer_info.vocab_size for c in constraints if c)
        self._bitmask = xgr.allocate_token_bitmask(len(constraints), vocab_size)
        self._scratch = xgr.allocate_token_bitmask(1, vocab_size)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens_left = self._max_new_tokens - self._step
        last = input_ids[:, -1].tolist()  # one device sync, not one per row
        active = []
        for row, matcher in enumerate(self._matchers):
            if matcher is None or matcher.is_terminated():
                continue
            if self._step > 0:
                self._accept(row, last[row])
            if matcher.is_terminated():
                continue
            matcher.fill_next_token_bitmask(self._bitmask, row)
            self._wrap_up(row, tokens_left)
            active.append(row)
        self._step += 1
        if active:
            xgr.apply_token_bitmask_inplace(
                scores, self._bitmask.to(scores.device, non_blocking=True), indices=active
            )
        return scores

    def _accept(self, row: int, token: int) -> None:
        matcher, finisher = self._matchers[row], self._finishers[row]
        if not matcher.accept_token(token):
            raise RuntimeError(f"row {row}: token {token} was sampled outside its grammar")
        if finisher is not None and not finisher.accept_token(token):
            self._finishers[row] = None

    def _ready_finisher(self, row: int, tokens_left: int) -> xgr.GrammarMatcher | None:
        """``row``'s wrap-up matcher once its budget is down to that rule's reserve (started
        now if need be), or ``None`` while the row is not to be narrowed."""
        constraint = self._constraints[row]
        if constraint is None or constraint.wrap_up is None or tokens_left > constraint.reserve:
            return None
        finisher = self._finishers[row]
        if finisher is None:
            finisher = xgr.GrammarMatcher(constraint.wrap_up)
            # Start only where the full grammar could take the wrap-up rule's fixed opening:
            # in free text, not inside a field of the answer that happens to allow its letters.
            probe = self._matchers[row].fork()
            if not probe.accept_string(finisher.find_jump_forward_string()):
                return None
        return finisher

    def _wrap_up(self, row: int, tokens_left: int) -> None:
        """Narrow ``row`` to its wrap-up rule once its budget is down to that rule's reserve."""
        finisher = self._ready_finisher(row, tokens_left)
        if finisher is None:
            return
        finisher.fill_next_token_bitmask(self._scratch, 0)
        narrowed = self._bitmask[row] & self._scratch[0]
        if bool(narrowed.any()):
            self._bitmask[row] = narrowed
            self._finishers[row] = finisher
        else:
            self._finishers[row] = None


class BatchGrammarMasks(GrammarLogitsProcessor):
    """:class:`GrammarLogitsProcessor` for a decode loop that drops finished rows.

    Why: the local backend's own decode loop keeps only unfinished rows in its
    batch, so the scores it masks are a shrinking subset of the rows this was
    built for; and it advances and fills every live row's matcher in one xgrammar
    call (:class:`xgrammar.BatchGrammarMatcher`) instead of one Python call per
    row. Masks, wrap-ups and errors are exactly the parent's, row for row.
    """

    def __init__(self, constraints: Sequence[Constraint | None], max_new_tokens: int) -> None:
        super().__init__(constraints, max_new_tokens)
        self._filler = xgr.BatchGrammarMatcher()
        self._wrap_scratch: torch.Tensor | None = None

    def mask(self, scores: torch.Tensor, rows: Sequence[int], last: Sequence[int] | None) -> None:
        """Mask ``scores`` in place for one decode step.

        Row ``k`` of ``scores`` is row ``rows[k]`` of the constraints; ``last[k]``
        is the token that row took at the previous step (``None`` at the first).
        """
        tokens_left = self._max_new_tokens - self._step
        self._step += 1
        matchers = self._matchers
        live = [
            (k, row)
            for k, row in enumerate(rows)
            if (matcher := matchers[row]) is not None and not matcher.is_terminated()
        ]
        if last is not None and live:
            tokens = [last[k] for k, _ in live]
            accepted = xgr.BatchGrammarMatcher.batch_accept_token(
                [matchers[row] for _, row in live], tokens
            )
            for (_, row), token, ok in zip(live, tokens, accepted, strict=True):
                if not ok:
                    raise RuntimeError(f"row {row}: token {token} was sampled outside its grammar")
            finishing = [
                (row, token)
                for (_, row), token in zip(live, tokens, strict=True)
                if self._finishers[row] is not None
            ]
            if finishing:
                followed = xgr.BatchGrammarMatcher.batch_accept_token(
                    [self._finishers[row] for row, _ in finishing],  # type: ignore[misc]
                    [token for _, token in finishing],
                )
                for (row, _), ok in zip(finishing, followed, strict=True):
                    if not ok:
                        self._finishers[row] = None
            live = [(k, row) for k, row in live if not matchers[row].is_terminated()]
        if not live:
            return
        index = [row for _, row in live]
        self._filler.batch_fill_next_token_bitmask(
            [matchers[row] for row in index], self._bitmask, indices=index
        )
        self._wrap_up_rows(index, tokens_left)
        positions = [k for k, _ in live]
        if positions == index:  # rows still where they started: the bitmask lines up
            bitmask = self._bitmask
        else:
            bitmask = torch.full(
                (scores.shape[0], self._bitmask.shape[1]), -1, dtype=self._bitmask.dtype
            )
            bitmask[positions] = self._bitmask[index]
        xgr.apply_token_bitmask_inplace(
            scores, bitmask.to(scores.device, non_blocking=True), indices=positions
        )

    def _wrap_up_rows(self, rows: Sequence[int], tokens_left: int) -> None:
        """The parent's ``_wrap_up`` for ``rows`` at once: one fill, one AND, one check."""
        ready = [
            (row, finisher)
            for row in rows
            if (finisher := self._ready_finisher(row, tokens_left)) is not None
        ]
        if not ready:
            return
        if self._wrap_scratch is None:
            self._wrap_scratch = torch.empty_like(self._bitmask)
        index = [row for row, _ in ready]
        self._filler.batch_fill_next_token_bitmask(
            [finisher for _, finisher in ready], self._wrap_scratch, indices=index
        )
        at = torch.tensor(index)
        narrowed = self._bitmask[at] & self._wrap_scratch[at]
        possible = narrowed.any(dim=1)
        self._bitmask[at[possible]] = narrowed[possible]
        for (row, finisher), ok in zip(ready, possible.tolist(), strict=True):
            self._finishers[row] = finisher if ok else None
