"""Prefill in the local backend: every prompt token a chunk's rows share is computed once.

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

Two users: the cascade decode loop takes the prefix tree's parts
(:class:`SharedPrefill`, into a :class:`~websynthesis.backends.cascade.Cascade`);
transformers' ``generate`` takes one cache with the chunk prefix computed once
(:func:`prefill_cache`).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from websynthesis.backends.cascade import KV, Cascade

# A forward call's fixed cost in prefilled token rows: padding that costs less than this
# is cheaper than another call. Measured ~40 for the tiny model on CPU (2 ms a call, 0.05
# ms a token), hundreds for a 7B model on a GPU; the larger value errs towards fewer calls.
CALL_COST_TOKENS = 128


@dataclass
class _Node:
    """A run of prompt tokens that the prompts below it share, under one adapter."""

    adapter: str
    tokens: list[int]
    ends: list[int]  # distinct prompts that end with this run
    children: list[_Node]


class PrefixCache:
    """The KV of chunk prefixes computed before, for later chunks that open alike.

    Why: batching continuously, a chunk is what arrived since the last admission, a few
    requests, and the prefix they share with every other request of their role (the system
    prompt and instructions: ~1,400 tokens of the tiny model's policy prompt) would be
    prefilled again at every admission. An entry is one chunk prefix's KV under one
    arrangement of adapters (a row per adapter); a later prefix reads the longest run of
    tokens it shares with an entry, which is exact: under a causal mask the keys of the
    first ``L`` tokens do not depend on what follows them. Least recently used entries go
    first. Only the continuous decode uses it: a reused prefix was computed in a call of
    another length, so its last bits may differ from a fresh one's, and the chunk decode
    keeps a run's answers independent of what ran before.
    """

    def __init__(self, entries: int = 8) -> None:
        if entries < 1:
            raise ValueError("a prefix cache needs at least one entry")
        self.entries = entries
        self._store: OrderedDict[tuple[object, ...], tuple[list[int], KV]] = OrderedDict()
        self.hits = self.tokens_reused = 0

    def lookup(self, arrangement: tuple[object, ...], tokens: list[int]) -> tuple[int, KV | None]:
        """The longest cached run ``tokens`` opens with (its length, its KV), or ``(0, None)``."""
        best, found = 0, None
        for key, (cached, kv) in self._store.items():
            if key[0] != arrangement:
                continue
            shared = shared_length(cached, tokens)
            if shared > best:
                best, found = shared, (key, kv)
        if found is None:
            return 0, None
        self._store.move_to_end(found[0])
        self.hits += 1
        self.tokens_reused += best
        return best, [(key[:, :, :best], value[:, :, :best]) for key, value in found[1]]

    def store(self, arrangement: tuple[object, ...], tokens: list[int], kv: KV) -> None:
        key = (arrangement, tuple(tokens))
        self._store[key] = (tokens, kv)
        self._store.move_to_end(key)
        while len(self._store) > self.entries:
            self._store.popitem(last=False)


def shared_length(first: list[int], second: list[int]) -> int:
    """How many tokens the two lists open with alike."""
    limit = min(len(first), len(second))
    if first[:limit] == second[:limit]:
        return limit
    low, high = 0, limit  # first[:low] == second[:low], first[:high] != second[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if first[:middle] == second[:middle]:
            low = middle
        else:
            high = middle
    return low


class SharedPrefill:
    """The KV of a chunk's prompts as a prefix tree, each shared run computed once.

    Args:
        model: the (peft-wrapped) model, its adapters already arranged for the chunk.
        device: where its inputs go.
        pad_token_id: what right-pads sibling runs of unequal length.
        min_tokens: shortest shared run worth a call of its own; ``None``: share nothing
            (every prompt prefilled whole, to compare against: outputs are the same).
        prefixes: chunk prefixes kept from earlier chunks (``None``: each chunk its own).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        pad_token_id: int,
        min_tokens: int | None,
        prefixes: PrefixCache | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_token_id = pad_token_id
        self.min_tokens = min_tokens
        self.prefixes = prefixes

    def tree(
        self, prompts: list[tuple[str, list[int]]], adapters: list[str], mixed: bool
    ) -> Cascade:
        """KV of every distinct prompt, each shared run of tokens computed once.

        ``prompts`` are (adapter, tokens) pairs, ``adapters`` those present in
        order. The chunk prefix becomes the cascade's first part (one row per
        adapter), what follows it in each prompt its second part.
        """
        bodies = [body for _, body in prompts]
        common = self.common_prefix(bodies)
        prefix: KV | None = None
        if common:
            prefix = self._prefix(bodies[0][:common], adapters, mixed)
        tails = [(i, a, body[common:]) for i, (a, body) in enumerate(prompts) if body[common:]]
        rests: list[KV | None] = [None] * len(prompts)
        nodes = self._radix(tails)
        if nodes:
            self._grow(nodes, prefix, adapters, common, None, rests, mixed)
        return Cascade(prefix, rests, [len(body) - common for body in bodies])

    def _prefix(self, tokens: list[int], adapters: list[str], mixed: bool) -> KV:
        """The chunk prefix's KV, a row per adapter, from what the prefix cache has of it."""
        arrangement = (tuple(adapters), mixed)
        reused, kv = (
            (0, None) if self.prefixes is None else self.prefixes.lookup(arrangement, tokens)
        )
        if reused < len(tokens):
            ids = torch.tensor([tokens[reused:]] * len(adapters), device=self.device)
            rows = list(range(len(adapters))) if kv is not None else []
            new = self._extend(kv, reused, ids, adapters if mixed else None, rows)
            kv = new if kv is None else _cat(kv, new)
        assert kv is not None
        if self.prefixes is not None:
            self.prefixes.store(arrangement, tokens, kv)
        return kv

    def common_prefix(self, bodies: list[list[int]]) -> int:
        """Tokens every body opens with, or 0 when too few to be worth a call of their own."""
        if self.min_tokens is None:
            return 0
        limit = min(len(b) for b in bodies)
        columns = enumerate(zip(*bodies, strict=False))  # lengths differ: up to the shortest
        length = next((k for k, col in columns if len(set(col)) > 1), limit)
        return length if length >= self.min_tokens else 0

    def _radix(self, members: list[tuple[int, str, list[int]]]) -> list[_Node]:
        """The prefix tree of ``(prompt, adapter, tokens)``, runs too short to share merged.

        A run shorter than ``min_tokens`` (or any, with sharing off) is not computed on its
        own: it is prepended to each branch below it.
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
            if node.children and (self.min_tokens is None or shared < self.min_tokens):
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
        pad = self.pad_token_id
        for bucket in buckets([len(node.tokens) for node in nodes], CALL_COST_TOKENS):
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


def prefill_cache(
    model: torch.nn.Module,
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
        return _forward(model, input_ids, attention_mask, position_ids, mixed, None)
    # One prefix row per adapter present, in order of first appearance.
    adapters = list(dict.fromkeys(mixed)) if mixed else [None]
    prefix_rows = len(adapters)
    cache = _forward(
        model,
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
    return _forward(
        model, input_ids[:, shared:], attention_mask, position_ids[:, shared:], mixed, cache
    )


def _forward(
    model: torch.nn.Module,
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
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        **({"adapter_names": mixed} if mixed else {}),
    )
    return out.past_key_values


def buckets(lengths: list[int], call_cost: int) -> list[list[int]]:
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
