"""Throughput of the observation layer over the real WebArena first pages.

Parsing and rendering sit on the MCTS hot path (every simulated step parses a
world-model page), so this checks the >= 1,000 pages/s-per-core target. Single process.

    python bench/bench_observation.py [tasks.jsonl] [--repeat N]

Prints a table, then one JSON line. "render (join)" times rendering trees that have
no cached text (as built by ``AXTree.from_nodes``); a parsed well-formed tree renders
its source text, which "parse+render" includes. "parse (spaces)" indents with spaces,
as broken world-model output does, which sends every line down the lenient path.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from corpus import page_tasks

from websynthesis.web.observation import AXTree, parse_axtree


def load_pages(path: Path | None) -> tuple[list[str], str]:
    """The first pages of ``path`` (default: the shared corpus, else the bundled pages)."""
    tasks, source = page_tasks(path)
    return [task["state"] for task in tasks], source


def best_time(run: Callable[[], object], repeat: int) -> float:
    """Best of ``repeat`` wall times: the machine is shared, so the minimum is the signal."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def megabytes(pages: Sequence[str]) -> float:
    return sum(len(page.encode("utf-8")) for page in pages) / 1e6


def measure(pages: Sequence[str], repeat: int) -> dict[str, dict[str, float]]:
    trees = [parse_axtree(page) for page in pages]

    def fresh() -> list[AXTree]:
        return [AXTree.from_nodes(t.nodes, header=t.header, trailer=t.trailer) for t in trees]

    def render_join() -> None:
        for tree in fresh_trees.pop():
            tree.render()

    fresh_trees = [fresh() for _ in range(repeat)]
    spaced = [page.replace("\t", "    ") for page in pages]  # every line on the slow path
    timings = {  # name: (seconds, megabytes of input text)
        "parse": (best_time(lambda: [parse_axtree(p) for p in pages], repeat), megabytes(pages)),
        "parse (spaces)": (
            best_time(lambda: [parse_axtree(p) for p in spaced], repeat),
            megabytes(spaced),
        ),
        "render (join)": (best_time(render_join, repeat), megabytes(pages)),
        "parse+render": (
            best_time(lambda: [parse_axtree(p).render() for p in pages], repeat),
            megabytes(pages),
        ),
    }
    return {
        name: {"seconds": seconds, "trees_per_s": len(pages) / seconds, "mb_per_s": mb / seconds}
        for name, (seconds, mb) in timings.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    pages, source = load_pages(args.path)
    results = measure(pages, args.repeat)
    mean_kb = megabytes(pages) / len(pages) * 1e3
    print(f"{len(pages)} pages of {source}, mean {mean_kb:.1f} KB, best of {args.repeat}")
    print(f"{'operation':<16}{'trees/s':>12}{'MB/s':>10}")
    for name, result in results.items():
        print(f"{name:<16}{result['trees_per_s']:>12,.0f}{result['mb_per_s']:>10.1f}")
    print(json.dumps({"pages": len(pages), "mean_kb": round(mean_kb, 2), "results": results}))


if __name__ == "__main__":
    main()
