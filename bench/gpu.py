"""Every GPU measurement the project has, in one run of under 8 minutes, as BENCHMARKS.md rows.

    python bench/gpu.py [--wheels bench/.wheels] [--out gpu_results]   # on the GPU machine
    python bench/gpu.py --dry-run                                      # here: CPU, shrunk

1. **decode** (``bench_generation.py --random-7b``): a random Qwen2.5-7B in bf16, batches of
   1, 16 and 64 requests of 96 tokens, tokens/s against the HBM bound (each decode step
   reads every weight once; bandwidth measured with a device-to-device copy);
2. **search** (``bench_synthesis.py throughput --gpu``): 64 trees searched at once with that
   model: the search's tokens/s over the same backend's raw batched tokens/s;
3. **training** (``bench_train.py --gpu-7b``): LoRA steps on one packed 4,096-token row,
   MFU and HFU against the measured bf16 matmul peak, flash-attention when installed
   (SDPA otherwise).

A bare GPU machine has torch, transformers, peft and lightning: ``--wheels DIR`` first
installs, from DIR only and without dependencies, what the benches import beyond them and
the machine lacks (``bench/gpu_requirements.txt``; ``make gpu-wheels`` downloads them
here). Each part runs in its own process with its own time limit (a part that fails or
runs out is reported as such and the others still run); ``--dry-run`` runs the same three
on the CPU with the model's shapes shrunk (``--shrunk``) and small sizes, which is how CI
checks this script. Writes ``<out>/gpu.json`` (every number) and ``<out>/gpu_rows.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Import name -> distribution, for what gpu_requirements.txt carries.
NEEDED = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "xgrammar": "xgrammar",
    "tvm_ffi": "apache-tvm-ffi",
    "openai": "openai",
    "jiter": "jiter",
    "distro": "distro",
    "httpx": "httpx",
    "httpcore": "httpcore",
    "h11": "h11",
    "anyio": "anyio",
    "sniffio": "sniffio",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic_core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "rich": "rich",
    "markdown_it": "markdown-it-py",
    "mdurl": "mdurl",
    "pygments": "Pygments",
    "psutil": "psutil",
}


def parts(dry_run: bool) -> dict[str, tuple[list[str], int]]:
    """Each part's command and time limit (seconds); ``dry_run``: shrunk, small, CPU."""
    shrunk = ["--shrunk"] if dry_run else []
    return {
        "decode": (
            ["bench_generation.py", "--random-7b", *shrunk, "--no-one-by-one",
             "--batch-sizes", "1,4" if dry_run else "1,16,64",
             "--max-new-tokens", "16" if dry_run else "96", "--json", "{out}/decode.json"],
            150,
        ),
        "search": (
            ["bench_synthesis.py", "throughput", "--gpu", *shrunk,
             "--trees", "1" if dry_run else "64"],
            210,
        ),
        "training": (
            ["bench_train.py", "--gpu-7b", *shrunk, "--steps", "2" if dry_run else "10",
             "--row-tokens", "256" if dry_run else "4096"],
            120,
        ),
    }  # fmt: skip


def install_missing(wheels: Path) -> list[str]:
    """Install, from ``wheels`` only, the carried distributions this machine lacks."""
    missing = [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        pins = {
            line.split("==")[0].lower(): line.strip()
            for line in (BENCH / "gpu_requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
        wanted = [pins.get(dist.lower(), dist) for dist in missing]
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps"]
        subprocess.run([*command, "--find-links", str(wheels), *wanted], check=True)
    return missing


def last_json(text: str) -> dict[str, Any] | None:
    """The last JSON object a bench printed (one line, or an indented block at the end)."""
    lines = text.rstrip().splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                found = json.loads("\n".join(lines[start:]))
            except json.JSONDecodeError:
                continue
            return found if isinstance(found, dict) else None
    return None


def run_part(name: str, command: list[str], limit: int, out: Path) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH / command[0]), *(a.format(out=out) for a in command[1:])]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        tail = (expired.stderr or b"")[-2000:]
        tail = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
        return {"ok": False, "why": f"ran past {limit} s", "stderr": tail}
    wall = round(time.monotonic() - started, 1)
    (out / f"{name}.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        return {"ok": False, "why": f"exit {done.returncode}", "stderr": done.stderr[-2000:]}
    if name == "decode":
        result = json.loads((out / "decode.json").read_text())
    else:
        result = last_json(done.stdout)
    if result is None:
        return {"ok": False, "why": "printed no result", "stdout": done.stdout[-2000:]}
    return {"ok": True, "wall_s": wall, "result": result}


def rows(report: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md rows: | part | figure | value |."""
    out = ["| part | figure | value |", "|---|---|---|"]
    decode = report["parts"].get("decode", {})
    if decode.get("ok"):
        result = decode["result"]
        for row in result["rows"]:
            grammar = "grammar" if row["grammar"] else "no grammar"
            out.append(f"| decode | tokens/s at batch {row['batch_size']}, {grammar} | "
                       f"{row['tokens_per_s']:.0f} |")  # fmt: skip
        for batch, bound in (result.get("bandwidth_bound") or {}).get("by_batch", {}).items():
            share, limit = bound["efficiency"], bound["bound_tokens_per_s"]
            out.append(f"| decode | share of the HBM bound at batch {batch} | "
                       f"{share:.0%} ({limit:.0f} tok/s) |")  # fmt: skip
    search = report["parts"].get("search", {})
    if search.get("ok"):
        for label, result in search["result"].get("throughput", {}).items():
            for name, row in result.items():
                if isinstance(row, dict) and "expansions_per_s" in row:
                    out.append(f"| search | {label}, {name}: expansions/s; tokens/s | "
                               f"{row['expansions_per_s']:.2f}; "
                               f"{row['completion_tokens_per_s']:.0f} |")  # fmt: skip
            if "raw_tokens_per_s" in result:
                out.append(f"| search | {label}: raw batched tokens/s | "
                           f"{result['raw_tokens_per_s']:.0f} |")  # fmt: skip
            if "search_over_raw" in result:
                out.append(f"| search | {label}: search over raw | "
                           f"{result['search_over_raw']:.0%} |")  # fmt: skip
    training = report["parts"].get("training", {})
    if training.get("ok"):
        result = training["result"]
        for key in ("attn_implementation", "tokens_per_s", "mfu", "hfu", "max_memory_gib"):
            if key in result:
                out.append(f"| training | {key} | {result[key]} |")
    for name, part in report["parts"].items():
        if not part.get("ok"):
            out.append(f"| {name} | not measured | {part['why']} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, shrunken shapes")
    parser.add_argument("--wheels", type=Path, default=None, help="carried wheels to install")
    parser.add_argument("--out", type=Path, default=Path("gpu_results"))
    parser.add_argument("--only", default=None, help="comma-separated parts (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    installed = install_missing(args.wheels) if args.wheels else []
    report: dict[str, Any] = {
        "dry_run": args.dry_run,
        "machine": platform.node(),
        "installed": installed,
        "parts": {},
    }
    started = time.monotonic()
    chosen = parts(args.dry_run)
    for name in args.only.split(",") if args.only else list(chosen):
        command, limit = chosen[name]
        report["parts"][name] = part = run_part(name, command, limit, args.out)
        print(f"{name}: {'ok' if part['ok'] else part['why']} ({part.get('wall_s', '-')} s)")
    report["wall_s"] = round(time.monotonic() - started, 1)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    table = "\n".join(rows(report))
    (args.out / "gpu_rows.md").write_text(table + "\n")
    print(table)
    print(f"total: {report['wall_s']} s")
    sys.exit(0 if all(part["ok"] for part in report["parts"].values()) else 1)


if __name__ == "__main__":
    main()
