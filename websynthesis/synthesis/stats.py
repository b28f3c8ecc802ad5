"""``stats.json``: what a synthesis run did, over every session that wrote its run dir.

Two kinds of numbers, kept apart because a resumed run must neither lose nor double them:

- **per task**, derived from ``trees.jsonl`` (the record): stop reason, nodes, iterations,
  whether it was solved, examples kept and dropped. Recomputed at every write.
- **counters** of the model layer and the web search (calls and tokens per role, cost,
  cache hits, parse failures by kind, batches, world and policy outcomes, wall time):
  each session adds its own to the previous sessions' total (:func:`merge_counts`), so a
  run killed and resumed reports what all its sessions spent, and its token and cost
  budgets cover all of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from websynthesis.search import SearchResult
from websynthesis.synthesis.extract import Extracted
from websynthesis.synthesis.store import TRAJECTORY_KINDS

_TAKE_MAX = frozenset({"largest_batch"})


def merge_counts(a: Any, b: Any, key: str = "") -> Any:
    """Add two counter trees (nested dicts of numbers); ``None`` is nothing to add."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return {k: merge_counts(a.get(k), b.get(k), k) for k in dict.fromkeys([*a, *b])}
    if isinstance(a, bool) or isinstance(b, bool):
        return b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return max(a, b) if key in _TAKE_MAX else a + b
    if isinstance(a, list) and isinstance(b, list):
        return sorted(set(a) | set(b))
    return b


def task_summary(result: SearchResult[Any, Any], extracted: Extracted) -> dict[str, Any]:
    """One searched task in a few numbers (stored in its ``trees.jsonl`` line)."""
    best = result.best()
    nodes = result.root.walk()
    return {
        "stop_reason": result.stop_reason.value,
        "iterations": result.iterations,
        "nodes": len(nodes),
        "expansions": result.stats.expansions,
        "max_depth": max(node.depth for node in nodes),
        "elapsed_s": round(result.elapsed_s, 3),
        "solved": best is not None,
        "best_value": None if best is None else result.config.value(best),
        "examples": extracted.counts(),
    }


def run_stats(
    records: Sequence[Mapping[str, Any]],
    tasks_total: int,
    counters: Mapping[str, Any],
    sessions: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, str]],
    skipped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole ``stats.json`` from the records, the summed counters and the sessions;
    ``skipped``: this session's tasks left unsearched, with why (never recorded as done)."""
    searched = [r for r in records if r.get("tree") is not None]
    summaries = {r["task_id"]: r["summary"] for r in records}
    trees: Counter[str] = Counter()
    for record in searched:
        trees.update(record["tree"]["stats"])
    examples: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    for record in searched:
        counts = record["summary"]["examples"]
        examples.update({kind: counts[kind] for kind in TRAJECTORY_KINDS})
        dropped.update(counts["dropped"])
    usage = counters.get("usage") or {}
    roles = usage.get("roles", {})
    return {
        "tasks": {
            "total": tasks_total,
            "done": len(records),
            "searched": len(searched),
            "solved": sum(1 for r in searched if r["summary"]["solved"]),
            "skipped": dict(skipped or {}),
            "stop_reasons": dict(Counter(r["summary"]["stop_reason"] for r in searched)),
            "errors": len(errors),
        },
        "nodes": sum(r["summary"]["nodes"] for r in searched),
        "search": dict(trees),
        "examples": dict(examples) | {"dropped": dict(sorted(dropped.items()))},
        "calls": {role: summary.get("calls", 0) for role, summary in roles.items()},
        "tokens": {role: _tokens(summary) for role, summary in roles.items()},
        "cost_usd": usage.get("total", {}).get("cost_usd"),
        "parse_failures": _parse_failures(counters.get("outcomes") or {}),
        "cache": counters.get("cache"),
        "batching": counters.get("batching"),
        "wall_time_s": counters.get("wall_time_s", 0.0),
        "sessions": list(sessions),
        "errors": list(errors),
        "per_task": summaries,
        "counters": dict(counters),
    }


def _tokens(summary: Mapping[str, Any]) -> dict[str, int]:
    return {
        "prompt": summary.get("prompt_tokens", 0),
        "completion": summary.get("completion_tokens", 0),
        "total": summary.get("total_tokens", 0),
    }


def _parse_failures(outcomes: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per role, the failure kinds of every parsed sample (retries included), ``ok`` left out."""
    return {
        role: {kind: n for kind, n in (data.get("attempts") or {}).items() if kind != "ok"}
        for role, data in outcomes.items()
    }
