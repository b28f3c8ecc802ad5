"""Throughput of web synthesis search: many trees at once vs one request at a time.

    python bench/bench_synthesis.py                   # all CPU parts (tiny model; ~3 min)
    python bench/bench_synthesis.py throughput [--trees 32] [--threads 1,2] [--cascade both]
        [--in-flight 2] [--max-batch 128]   # the batched search's wave shape
    python bench/bench_synthesis.py throughput --no-baseline --repeats 5   # search over raw, steady
    python bench/bench_synthesis.py overhead [--iterations 4000]
    python bench/bench_synthesis.py --gpu             # random Qwen2.5-7B on CUDA, 64 trees

(a) **throughput**: the real pipeline pieces (``model=tiny search=small`` composed by Hydra,
the tiny model's :class:`LocalBackend`, :class:`ModelClient`, :class:`ModelWorld`,
:class:`WebSearchPolicy`, :class:`SearchEngine`), on ``--trees`` tasks (the demo tasks
under distinct ids, so distinct seeds), searched (1) one tree and one request at a time
(``search.concurrent_trees=1 model.batching.enabled=false``, the reference's way) and (2) all
trees at once behind the :class:`BatchingBackend`. No response cache. Same seeds, so both searches
build the same trees (checked): the same node budget. Each search starts with a cold
grammar cache (neither warms the other's). Reported: node expansions/s of both and their
ratio (target >= 5x), the same per CPU second of this process (what other processes on a
shared machine hardly change), and the batched search's generated tokens/s against the
same backend's *raw* batched throughput: every request the search sent, replayed back to
back in full batches with nothing in between (target >= 80% on a GPU). On shared cores
pass ``--threads 1``: a preempted intra-op thread stalls every wide op at its barrier
(one 16-request world-model batch measured 37 s with two threads, 2.4 s with one). On an
idle machine ``--threads 1,2`` measures both searches at both counts and compares each
search at its own best.
``--cascade both`` runs (a) twice on one loaded model, with :class:`LocalBackend`'s own
decode loop (``cascade_decode``) on, then off (transformers' ``generate``), and prints
both ratios and the decode loop's speed-up side by side (``on``/``off``: one of them).
``--in-flight`` runs several iterations of each batched tree at once (virtual loss: wider
waves, trees no longer identical to the one-at-a-time ones, the same budget) and
``--max-batch`` caps the requests of one backend batch.

(b) **overhead**: the search core's own cost per node is ``bench/bench_search.py overhead``
(target <= 1 ms per node), reused here; next to it, the whole web layer's (prompt rendering,
parsing, validation, the client's bookkeeping) with a backend that answers instantly from a
precomputed table, so the time measured is everything but the model.

``--gpu``: (a) with a randomly initialised Qwen2.5-7B-architecture model in bf16 on CUDA
(shapes from ``bench_generation.py``) and 64 trees; the one-at-a-time baseline is skipped
unless ``--baseline``. Prints a table per part, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bench_search
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from websynthesis.backends.stack import build_stack
from websynthesis.backends.types import Backend, Generation, GenerationRequest
from websynthesis.backends.usage import UsageTracker
from websynthesis.config import register_configs
from websynthesis.data.tasks import load_tasks
from websynthesis.roles.client import ModelClient
from websynthesis.search import SearchEngine, SearchResult, TreeTask
from websynthesis.synthesis import (
    Goal,
    ModelWorld,
    WebSearchPolicy,
    WebState,
    engine_settings,
    search_settings,
)
from websynthesis.web.actions import ANSWER_PHRASE
from websynthesis.web.observation import parse_axtree

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        fixed = ["logger=none", "paths.root_dir=.", "paths.output_dir=.", "model.cache=false"]
        return compose(config_name="synthesize", overrides=[*fixed, *overrides])


class Recorder:
    """Passes requests through and keeps them (for the raw-throughput replay)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.requests: list[GenerationRequest] = []

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.requests += requests
        return await self.inner.agenerate(requests)

    @property
    def concurrent_batches(self) -> int:
        """The model's (so the batcher in front lets as many calls through as the job's)."""
        return int(getattr(self.inner, "concurrent_batches", 1))

    def close(self) -> None:
        """The model is shared by the measurements; the caller closes it."""


@dataclass
class Measured:
    seconds: float
    cpu_seconds: float  # this process's CPU time: what other processes' load hardly changes
    expansions: int
    nodes: int
    completion_tokens: int
    batches: int
    trees: list[dict[str, Any]]
    requests: list[GenerationRequest]
    step_rows: float  # mean rows per decode step of the local backend (0: not measured)
    dedup_hits: int  # requests the batcher answered with another's identical request's answer

    def row(self) -> dict[str, float]:
        return {
            "mean_rows_per_decode_step": self.step_rows,
            "dedup_hits": self.dedup_hits,
            "seconds": self.seconds,
            "expansions": self.expansions,
            "nodes": self.nodes,
            "expansions_per_s": self.expansions / self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "expansions_per_cpu_s": self.expansions / self.cpu_seconds,
            "completion_tokens_per_s": self.completion_tokens / self.seconds,
            "batches": self.batches,
        }


def tasks(count: int, distinct: bool = False) -> list[TreeTask[WebState]]:
    """``count`` demo tasks under distinct ids (so distinct tree seeds); ``distinct``: each
    intent marked with its copy's number too, so that no two trees send the same prompt
    (copies of one task otherwise ask the world model the same step, which a batch answers
    once)."""
    demo = load_tasks("demo")
    work = []
    for i in range(count):
        task = demo[i % len(demo)]
        intent = f"{task.intent} (copy {i})" if distinct else task.intent
        task = replace(task, task_id=f"{task.task_id}#{i}", intent=intent)
        state = WebState(task.task_id, parse_axtree(task.state or ""))
        work.append(TreeTask(task.task_id, state, Goal.from_task(task)))
    return work


def search(cfg: DictConfig, model: Backend, work: list[TreeTask[WebState]]) -> Measured:
    """One synthesis search of ``work`` as ``cfg.search`` says (no extraction, no files)."""
    recorder = Recorder(model)
    stack = build_stack(cfg.model, backend=recorder)  # batched as the job would be, no cache
    batcher = stack.batcher
    usage = UsageTracker()
    client = ModelClient.from_config(cfg.model, backend=stack.backend, usage=usage)
    world = ModelWorld(client, accept_malformed=cfg.world.accept_malformed_pages)
    policy = WebSearchPolicy(client)
    engine: SearchEngine[WebState, Any] = SearchEngine(
        world,
        policy,
        search_settings(cfg.search, policy.scale, int(cfg.seed)),
        engine_settings(cfg.search, cfg.model.batching),
    )
    # Every search compiles its own grammars: the first one measured must not warm the second's.
    getattr(model, "__dict__", {}).pop("grammars", None)
    stats = getattr(model, "stats", None)  # a LocalBackend's: the width of its decode steps
    before = (stats.decode_steps, stats.step_rows) if hasattr(stats, "decode_steps") else (0, 0)
    start, cpu_start = time.perf_counter(), time.process_time()
    results = engine.run(work)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    steps = stats.decode_steps - before[0] if hasattr(stats, "decode_steps") else 0
    rows = stats.step_rows - before[1] if hasattr(stats, "step_rows") else 0
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    return Measured(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        expansions=sum(r.stats.expansions for r in results),
        nodes=sum(len(r.root.walk()) for r in results),
        completion_tokens=usage.counts().completion_tokens,
        batches=batcher.stats.batches if batcher else usage.counts().calls,
        trees=[_shape(r) for r in results],
        requests=recorder.requests,
        step_rows=rows / steps if steps else 0.0,
        dedup_hits=batcher.stats.dedup_hits if batcher else 0,
    )


def _shape(result: SearchResult[WebState, Any]) -> dict[str, Any]:
    return {
        n["id"]: (n["action"], n["reward"]) for n in result.to_dict(lambda s: None, str)["nodes"]
    }


def raw_throughput(model: Backend, requests: list[GenerationRequest], batch: int) -> float:
    """Completion tokens/s of ``requests`` sent back to back, ``batch`` at a time, by role."""
    by_role: dict[str, list[GenerationRequest]] = {}
    for request in requests:
        by_role.setdefault(request.role, []).append(request)
    chunks = [rs[i : i + batch] for rs in by_role.values() for i in range(0, len(rs), batch)]

    async def replay() -> int:
        tokens = 0
        for chunk in chunks:
            tokens += sum(g.completion_tokens for g in await model.agenerate(chunk))
        return tokens

    start = time.perf_counter()
    tokens = asyncio.run(replay())
    return tokens / (time.perf_counter() - start)


def throughput(args: argparse.Namespace, model: Backend, overrides: list[str]) -> dict[str, Any]:
    work = tasks(args.trees)
    shape = {
        "search.in_flight_per_tree": args.in_flight,
        "model.batching.max_batch_size": args.max_batch,
    }
    batched_cfg = compose_config(
        *overrides,
        f"search.concurrent_trees={args.trees}",
        *(f"{key}={value}" for key, value in shape.items() if value is not None),
    )
    report: dict[str, Any] = {"trees": args.trees}
    if args.baseline:
        one_cfg = compose_config(
            *overrides, "search.concurrent_trees=1", "model.batching.enabled=false"
        )
        one = search(one_cfg, model, work)
        report["one at a time"] = one.row()
    batched = search(batched_cfg, model, work)
    report[f"{args.trees} trees batched"] = batched.row()
    if args.baseline:
        # Same budget (iterations per tree), not always the same trees: batch composition
        # changes float rounding, so a greedy near-tie can go the other way in a long
        # generation. Rates per expansion are compared, and how many trees matched is shown.
        pairs = zip(batched.trees, one.trees, strict=True)
        report["identical_trees"] = sum(mine == theirs for mine, theirs in pairs)
        report["ratio"] = batched.row()["expansions_per_s"] / one.row()["expansions_per_s"]
        report["cpu_ratio"] = (
            batched.row()["expansions_per_cpu_s"] / one.row()["expansions_per_cpu_s"]
        )
    width = batched_cfg.model.batching.max_batch_size
    raw = raw_throughput(model, batched.requests, width)
    report["raw_tokens_per_s"] = raw
    report["search_over_raw"] = batched.row()["completion_tokens_per_s"] / raw
    if args.repeats > 1:
        report["interleaved"] = interleaved(args.repeats, batched, raw, batched_cfg, model, work)
    return report


def interleaved(
    repeats: int,
    first: Measured,
    first_raw: float,
    cfg: DictConfig,
    model: Backend,
    work: list[TreeTask[WebState]],
) -> dict[str, Any]:
    """The search and its raw replay in turn, ``repeats`` times each (the first pair is the
    one already measured): a slower minute of a shared machine slows both of a pair, so the
    per-pair ratio and the medians are what to quote, with the spread beside them."""
    searched = [first.row()["completion_tokens_per_s"]]
    raws = [first_raw]
    for _ in range(repeats - 1):
        again = search(cfg, model, work)
        searched.append(again.row()["completion_tokens_per_s"])
        raws.append(raw_throughput(model, again.requests, cfg.model.batching.max_batch_size))
    ratios = [s / r for s, r in zip(searched, raws, strict=True)]
    return {
        "search_tokens_per_s": searched,
        "raw_tokens_per_s": raws,
        "search_over_raw": ratios,
        "median_search_over_raw": statistics.median(ratios),
        "spread_search_over_raw": [min(ratios), max(ratios)],
        "median_raw_tokens_per_s": statistics.median(raws),
        "spread_raw_tokens_per_s": [min(raws), max(raws)],
    }


class Table:
    """An instant backend: each role's answer is read from a table built once."""

    cache_identity = "table"

    def __init__(self, page: str, actions: list[str]) -> None:
        fence = "```"
        self.answers = {
            "policy": [f"Let's think. {ANSWER_PHRASE} {fence}{a}{fence}" for a in actions],
            "world_model": [f"<a11y>\n{page}\n</a11y>"],
            "reward": ["Reason: progress.\nScore: 3"],
        }

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out = []
        for request in requests:
            answers = self.answers[request.role]
            texts = [answers[j % len(answers)] for j in range(request.sampling.n)]
            out.append(Generation(texts, 1, 1, ["stop"] * len(texts)))
        return out

    def close(self) -> None:
        pass


def web_overhead(nodes_target: int) -> dict[str, float]:
    """ms per node of the web layer + core with instant answers (best of 3)."""
    task = load_tasks("demo")[0]
    assert task.state is not None
    actions = ["click [21]", "click [22]", "type [15] [Le Guin] [1]", "click [16]"]
    per_tree = 40
    trees = max(1, nodes_target // (2 * per_tree))
    overrides = [
        "search=small",
        f"search.iterations={per_tree}",
        "search.max_depth=8",
        f"search.concurrent_trees={trees}",
    ]
    cfg = compose_config("model=tiny", *overrides)
    best = None
    for _ in range(3):
        measured = search(cfg, Table(task.state, actions), tasks(trees))
        if best is None or measured.seconds < best.seconds:
            best = measured
    assert best is not None
    return {
        "trees": trees,
        "nodes": best.nodes,
        "expansions": best.expansions,
        "ms_per_node": 1000 * best.seconds / best.nodes,
        "ms_per_expansion": 1000 * best.seconds / best.expansions,
    }


def random_7b(shrunk: bool = False) -> Backend:
    """A random Qwen2.5-7B-architecture model in bf16 on CUDA (bench_generation's recipe;
    ``shrunk``: its small twin, to check this path on a CPU)."""
    import bench_generation

    backend: Backend = bench_generation.random_backend(shrunk)
    return backend


def print_throughput(label: str, result: dict[str, Any]) -> None:
    print(
        f"{'throughput, ' + label:<28}{'expansions':>11}{'nodes':>7}{'seconds':>9}{'exp/s':>8}"
        f"{'cpu s':>9}{'exp/cpu s':>10}"
    )
    for name, row in result.items():
        if isinstance(row, dict) and "expansions" in row:  # a search, not "interleaved"
            print(
                f"{name:<28}{row['expansions']:>11.0f}{row['nodes']:>7.0f}"
                f"{row['seconds']:>9.2f}{row['expansions_per_s']:>8.2f}"
                f"{row['cpu_seconds']:>9.2f}{row['expansions_per_cpu_s']:>10.2f}"
            )
    if "ratio" in result:
        print(f"expansions/s, batched / one at a time: {result['ratio']:.1f}x")
        print(f"expansions per CPU second, the same ratio: {result['cpu_ratio']:.1f}x")
        print(f"identical trees: {result['identical_trees']} of {result['trees']}")
    print(f"search tokens/s over raw batched tokens/s: {result['search_over_raw']:.0%}")
    if "interleaved" in result:
        more = result["interleaved"]
        low, high = more["spread_search_over_raw"]
        ratios = ", ".join(f"{r:.0%}" for r in more["search_over_raw"])
        print(
            f"interleaved x{len(more['search_over_raw'])}: search over raw median "
            f"{more['median_search_over_raw']:.0%} (spread {low:.0%}-{high:.0%}: {ratios}); "
            f"raw tokens/s median {more['median_raw_tokens_per_s']:.0f} "
            f"({more['spread_raw_tokens_per_s'][0]:.0f}-{more['spread_raw_tokens_per_s'][1]:.0f})"
        )


def cascade_speedup(on: dict[str, Any], off: dict[str, Any]) -> dict[str, float]:
    """Expansions/s with the decode loop over without it, per search mode measured."""
    return {
        name: row["expansions_per_s"] / off[name]["expansions_per_s"]
        for name, row in on.items()
        if isinstance(row, dict)
    }


def best_ratio(results: dict[str, dict[str, Any]]) -> float:
    """The fastest batched search over the fastest one-at-a-time search, whatever their threads.

    Why: torch's thread count favours the two searches differently (wide batched ops
    split across cores; batch-1 steps mostly pay the threads' synchronisation), so each
    is compared at its own best.
    """
    rows = [(name, row) for result in results.values() for name, row in result.items()]
    best = {
        mode: max(row["expansions_per_s"] for name, row in rows if name.endswith(mode))
        for mode in ("batched", "one at a time")
    }
    return best["batched"] / best["one at a time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", nargs="?", choices=["throughput", "overhead", "all"], default="all")
    parser.add_argument("--trees", type=int, default=None, help="32 (CPU) or 64 (--gpu)")
    parser.add_argument("--gpu", action="store_true", help="random Qwen2.5-7B on CUDA")
    parser.add_argument("--shrunk", action="store_true", help="--gpu's model shrunk (CPU check)")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also search one at a time (default: on, off with --gpu)",
    )
    parser.add_argument("--iterations", type=int, default=4000, help="overhead: nodes")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="throughput: the batched search and its raw replay in turn, this many times each "
        "(medians and spread of search over raw)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        help="batched search: iterations in flight per tree (default: search config's, 1)",
    )
    parser.add_argument(
        "--max-batch", type=int, help="batched search: requests per backend batch (default: 64)"
    )
    parser.add_argument(
        "--threads",
        type=lambda text: [int(count) for count in text.split(",")],
        default=[None],
        help="torch CPU threads, or a list (1,2): every measurement at each count, and the "
        "best of each search against the best of the other (default: torch's, all cores)",
    )
    parser.add_argument(
        "--cascade",
        choices=["on", "off", "both"],
        default="on",
        help="LocalBackend's cascade decode; both: on, then off, side by side in one run",
    )
    parser.add_argument(
        "--continuous",
        choices=["on", "off", "both"],
        default="off",
        help="LocalBackend's continuous batching (requests join a running decode); both: "
        "continuous, then the chunk decode, side by side in one run",
    )
    args = parser.parse_args()
    args.trees = args.trees or (64 if args.gpu else 32)
    args.baseline = (not args.gpu) if args.baseline is None else args.baseline
    report: dict[str, Any] = {}
    if args.part in ("throughput", "all"):
        overrides = ["model=tiny", "search=small", "search.time_limit_s=null"]
        cfg = compose_config(*overrides)
        model = random_7b(args.shrunk) if args.gpu else instantiate(cfg.model.backend)
        asyncio.run(model.agenerate([GenerationRequest(({"role": "user", "content": "hi"},))]))
        choices = {"on": [True], "off": [False], "both": [True, False]}
        results, speedups = {}, {}
        for threads in args.threads:
            if threads:
                torch.set_num_threads(threads)
            at = f"{torch.get_num_threads()} threads"
            for continuous in choices[args.continuous]:
                model.continuous = continuous  # type: ignore[attr-defined]
                decode = "continuous" if continuous else "chunk decode"
                by_cascade = {}
                for cascade in choices[args.cascade]:
                    model.cascade_decode = cascade  # type: ignore[attr-defined]
                    label = f"cascade {'on' if cascade else 'off'}, {decode}, {at}"
                    results[label] = by_cascade[cascade] = throughput(args, model, overrides)
                    print_throughput(label, results[label])
                if len(by_cascade) == 2:
                    for name, up in cascade_speedup(by_cascade[True], by_cascade[False]).items():
                        speedups[f"{name}, {decode}, {at}"] = up
                        print(f"cascade on / off, {name}, {decode}, {at}, expansions/s: {up:.2f}x")
        model.close()
        report["throughput"] = results
        if speedups:
            report["cascade_speedup"] = speedups
        if args.baseline and len(args.threads) > 1:
            report["best_ratio"] = best_ratio(results)
            print(f"best batched / best one at a time: {report['best_ratio']:.1f}x")
    if args.part in ("overhead", "all") and not args.gpu:
        core = bench_search.overhead(args.iterations, profile=False)
        web = web_overhead(args.iterations)
        print(f"{'overhead':<24}{'nodes':>8}{'ms/node':>10}")
        for name, row in core.items():
            print(f"{'core: ' + name:<24}{row['nodes']:>8.0f}{row['ms_per_node']:>10.3f}")
        print(f"{'web layer + core':<24}{web['nodes']:>8.0f}{web['ms_per_node']:>10.3f}")
        report["overhead"] = {"core": core, "web": web}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
