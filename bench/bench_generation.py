"""Throughput of LocalBackend: batched vs one-by-one, with and without a grammar.

    python bench/bench_generation.py                       # tiny random model, CPU
    python bench/bench_generation.py --random-7b --batch-sizes 1,8,64   # Qwen2.5-7B shapes, GPU
    python bench/bench_generation.py --random-7b --shrunk   # the same path, small, on a CPU
    python bench/bench_generation.py --model-path Qwen/Qwen2.5-7B-Instruct
    python bench/bench_generation.py --batch-sizes 32 --shared-prefix-chars 5000

For every batch size B it sends B different chat requests (T=1, seeded) once
as one ``agenerate`` batch and once one request at a time, in the same run,
and reports requests/s, generated tokens/s (prefill included) and the speed-up of batching. With
``--grammar`` rows (default on) every request carries an action grammar.

``--shared-prefix-chars N`` prepends the same N-character system prompt to
every request, as MCTS batches do (one system prompt and few-shot turns per
role). Each batch then runs twice, with LocalBackend's prefix sharing on and
off, against the same one-by-one baseline, so the gain of sharing is read off
one run.

On a GPU the one-by-one baseline is what takes time (about 2 s per request
for a 7B model and 96 tokens): trim ``--batch-sizes`` or pass ``--no-one-by-one``
to stay within a few minutes.

The tiny model also gets a validity check: how many of 64 samples hold an
action that parses and names an element on the page, with and without the
grammar. On a GPU the report adds the memory-bandwidth bound of decoding:
each decode step reads every weight once, so at batch B tokens/s can be at
most B x (HBM bandwidth / weight bytes); bandwidth is measured with a large
device-to-device copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import random_qwen
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from websynthesis.backends.loading import choose_attn_implementation
from websynthesis.backends.local import LocalBackend
from websynthesis.backends.tiny import build_tiny_model
from websynthesis.backends.types import Generation, GenerationRequest, Sampling
from websynthesis.roles.grammar import action_grammar
from websynthesis.web.actions import ActionKind, ActionParseError, extract_action

IDS = ["12", "7", "164", "a51", "233"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-path", help="a local model directory or Hub id")
    source.add_argument("--random-7b", action="store_true", help="random Qwen2.5-7B, bf16, GPU")
    parser.add_argument("--shrunk", action="store_true", help="--random-7b's shapes shrunk (CPU)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--max-text-chars", type=int, default=8, help="grammar's field bound")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-one-by-one", action="store_true", help="skip the slow baseline")
    parser.add_argument(
        "--shared-prefix-chars",
        type=int,
        default=0,
        help="prepend a common system prompt of this many characters; compare sharing on/off",
    )
    parser.add_argument("--no-grammar-rows", action="store_true", help="skip the grammar rows")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    backend = _backend(args)
    grammar = action_grammar(IDS, max_text_chars=args.max_text_chars)
    report: dict = {"model": backend.model_path, "device": str(backend.device), "rows": []}
    shared = _shared_system_prompt(args.shared_prefix_chars)
    sharing = (True, False) if shared else (backend.share_prefix,)
    print(
        f"{'grammar':>7} {'B':>3} {'share':>5} {'req/s':>8} {'tok/s':>9} {'1x1 req/s':>9}"
        f" {'1x1 tok/s':>9} {'speed-up':>8}"
    )
    for grammar_on in (False,) if args.no_grammar_rows else (False, True):
        rule = grammar if grammar_on else None
        _timed(backend, [_requests(2, 4, rule, shared)])  # warm-up, compile
        for size in (int(b) for b in args.batch_sizes.split(",")):
            requests = _requests(size, args.max_new_tokens, rule, shared)
            alone = None if args.no_one_by_one else _timed(backend, [[r] for r in requests])
            for share in sharing:
                backend.share_prefix = share
                row = {"grammar": grammar_on, "batch_size": size, "share_prefix": share}
                row |= _timed(backend, [requests])
                if alone is not None:
                    row |= {f"one_by_one_{k}": v for k, v in alone.items()}
                    row["speedup"] = alone["seconds"] / row["seconds"]
                report["rows"].append(row)
                print(
                    f"{'yes' if grammar_on else 'no':>7} {size:>3} {'on' if share else 'off':>5}"
                    f" {row['requests_per_s']:>8.1f} {row['tokens_per_s']:>9.0f}"
                    f" {row.get('one_by_one_requests_per_s', 0):>9.1f}"
                    f" {row.get('one_by_one_tokens_per_s', 0):>9.0f} {row.get('speedup', 0):>7.2f}x"
                )
            if len(sharing) == 2:
                on, off = report["rows"][-2:]
                print(f"{'':>11} sharing on / off: {off['seconds'] / on['seconds']:.2f}x faster")
    backend.share_prefix = True
    if backend.device.type == "cuda":
        report["bandwidth_bound"] = _bandwidth_bound(backend, report["rows"])
    if args.model_path is None and not args.random_7b:
        report["validity"] = _validity(backend)
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _backend(args: argparse.Namespace) -> LocalBackend:
    if args.model_path:
        return LocalBackend(args.model_path)
    if not args.random_7b:
        return LocalBackend(str(build_tiny_model()))
    return random_backend(args.shrunk)


def random_backend(shrunk: bool = False) -> LocalBackend:
    """A random Qwen2.5-7B-architecture model in bf16 (``shrunk``: its small twin, which may
    run on a CPU). Random weights need no download."""
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model())
    config = Qwen2Config(
        **random_qwen.shapes(shrunk),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with random_qwen.device(shrunk):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation=choose_attn_implementation()
        )
    name = "random-qwen2.5-7b" + ("-shrunk" if shrunk else "")
    return LocalBackend.from_model(model.eval(), tokenizer, name=name)


def _shared_system_prompt(chars: int) -> str:
    """``chars`` characters of agent instructions, the same for every request ("" for none)."""
    rules = [
        f"Rule {k}: read the accessibility tree, keep the task in mind, and prefer the element "
        f"whose label names the goal (ids like [{k * 7 % 500}] are stable within a page). "
        for k in range(1 + chars // 100)
    ]
    return "".join(rules)[:chars]


def _requests(
    size: int, max_new_tokens: int, grammar: str | None, shared: str = ""
) -> list[GenerationRequest]:
    system = f"{shared}You are a web agent. Answer with one action."
    return [
        GenerationRequest(
            messages=(
                {"role": "system", "content": system},
                {"role": "user", "content": f"Task {i}: find the cheapest item. " * (1 + i % 4)},
            ),
            sampling=Sampling(temperature=1.0, seed=i, max_new_tokens=max_new_tokens),
            grammar=grammar,
        )
        for i in range(size)
    ]


def _timed(backend: LocalBackend, batches: list[list[GenerationRequest]]) -> dict[str, float]:
    """Run the batches one after the other; wall time, throughput and finish counts."""

    async def run() -> list[Generation]:
        return [g for batch in batches for g in await backend.agenerate(batch)]

    if backend.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = asyncio.run(run())
    seconds = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    tokens = sum(r.completion_tokens for r in results)
    return {
        "seconds": seconds,
        "requests_per_s": len(results) / seconds,
        "tokens_per_s": tokens / seconds,
        "completion_tokens": tokens,
    }


def _validity(backend: LocalBackend, samples: int = 64) -> dict:
    """Share of samples whose action parses and names a known element, with and without grammar."""
    out = {}
    for label, grammar in (("free", None), ("grammar", action_grammar(IDS, max_text_chars=12))):
        request = GenerationRequest(
            messages=({"role": "user", "content": "What's the next action?"},),
            sampling=Sampling(temperature=1.0, n=samples, seed=0, max_new_tokens=128),
            grammar=grammar,
        )
        [result] = asyncio.run(backend.agenerate([request]))
        valid = 0
        for text in result.texts:
            try:
                action = extract_action(text)
            except ActionParseError:
                continue
            element = action.kind in {ActionKind.CLICK, ActionKind.HOVER, ActionKind.TYPE}
            valid += not element or action.target in IDS
        out[label] = {"samples": samples, "invalid_rate": 1 - valid / samples}
    return out


def _bandwidth_bound(backend: LocalBackend, rows: list[dict]) -> dict:
    """Measured HBM bandwidth, and the decode tokens/s it allows at each batch size."""
    n = 2**31  # 4 GiB of bf16 per buffer: far beyond any cache
    src = torch.empty(n, dtype=torch.bfloat16, device=backend.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    bandwidth = 2 * src.nbytes * 10 / (start.elapsed_time(end) / 1e3)  # read + write
    del src, dst
    model = backend.model
    embedding = model.get_input_embeddings().weight
    read_per_step = sum(p.nbytes for p in model.parameters()) - embedding.nbytes
    bound = {
        f"{r['batch_size']}{'' if r['share_prefix'] else '/no-share'}": {
            "bound_tokens_per_s": r["batch_size"] * bandwidth / read_per_step,
            "measured_tokens_per_s": r["tokens_per_s"],
            "efficiency": r["tokens_per_s"] / (r["batch_size"] * bandwidth / read_per_step),
        }
        for r in rows
        if not r["grammar"]
    }
    return {"hbm_bytes_per_s": bandwidth, "weight_bytes_per_step": read_per_step, "by_batch": bound}


if __name__ == "__main__":
    main()
