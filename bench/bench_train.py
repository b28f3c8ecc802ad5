"""Training throughput: padding-free packing vs padding, and LoRA MFU of a 7B model on a GPU.

Default (CPU): policy-style examples are built from the first pages of the shared WebArena
tasks (system prompt, objective + page, a chain-of-thought answer ending in an action),
tokenized with the tiny model's tokenizer exactly as training does, and their length
distribution is reported. A seeded sample of them is trained on once packed and once
padded, each batched by the training planner under the same token budget (length-grouped
either way), with the tiny model, LoRA all-linear and gradient checkpointing as in
training. Reported: real (non-pad) tokens per second of each, and their ratio.

    python bench/bench_train.py ../shared/data/webarena/tasks.jsonl

``--gpu-7b``: a randomly initialised Qwen2.5-7B (the real architecture), bf16 base with
fp32 LoRA all-linear r=16 under bf16 autocast, gradient checkpointing, packed rows of
4096 tokens (segment lengths drawn from the same page distribution) with flash-attention
varlen when available. Reported: step time, tokens/s, and model FLOPs utilisation against
the bf16 matmul peak measured on the same GPU. LoRA's model FLOPs per token are 4N (the
forward, and the backward's activation gradients; no base weight gradients) plus causal
attention (forward, backward at twice the forward); hardware FLOPs add the checkpointing
recompute (another forward).

    python bench/bench_train.py ../shared/data/webarena/tasks.jsonl --gpu-7b
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import random_qwen
import torch
from corpus import page_tasks

from websynthesis.backends.loading import choose_attn_implementation, load_model, load_tokenizer
from websynthesis.backends.tiny import build_tiny_model
from websynthesis.config import LoraConfig, OptimConfig
from websynthesis.data.chat import ChatExample
from websynthesis.training.collate import as_features, pack_collate, pad_collate, plan_batches
from websynthesis.training.module import LoraModule, attach_lora
from websynthesis.training.tokenize import Tokenized, tokenize_examples

ANSWER = (
    "Let's think step-by-step. The page lists the items I need and the objective asks for "
    "the first one, so I will open it. In summary, the next action I will perform is "
    "```click [{id}]```"
)


def policy_examples(tasks: Path | None) -> list[ChatExample]:
    """One policy step per task with a first page, shaped like the synthesized ones
    (``tasks``: a JSONL of them; default: the shared corpus, else the bundled pages)."""
    rows, source = page_tasks(tasks)
    print(f"pages: {len(rows)} of {source}")
    examples = []
    for task in rows:
        user = f"OBJECTIVE:\n{task['intent']}\n\nOBSERVATION:\n{task['state']}\n\nWhat's next?"
        examples.append(
            ChatExample(
                (
                    {"role": "system", "content": "You are an autonomous web agent."},
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": ANSWER.format(id=task["task_id"])},
                )
            )
        )
    return examples


def distribution(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    return {
        "n": len(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        **{
            f"p{q}": ordered[min(len(ordered) - 1, len(ordered) * q // 100)]
            for q in (10, 50, 90, 99)
        },
        "max": ordered[-1],
    }


def train_tokens_per_s(
    module: LoraModule, sequences: list[Tokenized], batch_tokens: int, packing: bool, pad_id: int
) -> dict[str, float]:
    """One pass over ``sequences`` (the first batch is warm-up); real tokens per second."""
    lengths = [len(s) for s in sequences]
    batches = plan_batches(lengths, batch_tokens, packing=packing, seed=0)
    collate = pack_collate() if packing else pad_collate(pad_id)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()
    tokens = elapsed = computed = 0
    for step, batch_indices in enumerate(batches):
        batch = collate(as_features([sequences[i] for i in batch_indices]))
        start = time.perf_counter()
        module(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            elapsed += time.perf_counter() - start
            tokens += sum(lengths[i] for i in batch_indices)
            computed += batch["input_ids"].numel()
    return {
        "batches": len(batches),
        "tokens_per_s": round(tokens / elapsed, 1),
        "padding_share": round(1 - tokens / computed, 3),
    }


def cpu_bench(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    path = str(build_tiny_model())
    tokenizer = load_tokenizer(path)
    sequences, stats = tokenize_examples(
        tokenizer, policy_examples(args.tasks), max_length=args.max_length
    )
    lengths = [len(s) for s in sequences]
    sample = random.Random(args.seed).choices(sequences, k=args.examples)
    results = {}
    for mode, packing in (("packed", True), ("padded", False)):
        torch.manual_seed(args.seed)
        base = load_model(path, attn_implementation="sdpa", device="cpu")
        model = attach_lora(base, LoraConfig(), gradient_checkpointing=True)
        module = LoraModule(model, OptimConfig(), total_steps=1)
        results[mode] = train_tokens_per_s(
            module, sample, args.batch_tokens, packing, tokenizer.pad_token_id
        )
    return {
        "mode": "cpu-tiny",
        "threads": args.threads,
        "examples": args.examples,
        "max_length": args.max_length,
        "batch_tokens": args.batch_tokens,
        "lengths": distribution(lengths),
        "tokenize": stats.to_dict(),
        **results,
        "packed_over_padded": round(
            results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"], 2
        ),
    }


def matmul_peak_tflops(size: int = 8192, repeats: int = 30) -> float:
    """Measured dense bf16 matmul throughput: the MFU denominator."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def gpu_7b_bench(args: argparse.Namespace) -> dict[str, object]:
    """LoRA steps on one packed row of ``args.row_tokens`` with a random Qwen2.5-7B (``args.
    shrunk``: its small twin, on a CPU when there is no GPU: the same path, no MFU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**random_qwen.shapes(args.shrunk))
    where = random_qwen.device(args.shrunk)
    row = args.row_tokens
    attn = choose_attn_implementation("auto")
    with where:
        base = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
    matmul_params = sum(
        m.weight.numel() for m in base.modules() if isinstance(m, torch.nn.Linear)
    )  # every projection and lm_head; the embedding lookup does no matmul
    model = attach_lora(base, LoraConfig(r=16, alpha=32), gradient_checkpointing=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    tokenizer = load_tokenizer(str(build_tiny_model()))
    sequences, _ = tokenize_examples(tokenizer, policy_examples(args.tasks), max_length=row)
    rng = random.Random(args.seed)
    segments, total = [], 0
    while total < row:  # one packed row of page-shaped segments
        length = min(len(rng.choice(sequences)), row - total)
        segments.append(length)
        total += length
    features = [
        {"input_ids": [rng.randrange(100, 150000) for _ in range(n)], "labels": [-100] * n}
        for n in segments
    ]
    for feature in features:  # a target at each segment's end, as in policy examples
        feature["labels"][-64:] = feature["input_ids"][-64:]
    batch = {k: v.to(where) for k, v in pack_collate()(features).items()}

    def step() -> None:
        with torch.autocast(where.type, dtype=torch.bfloat16):
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    random_qwen.synchronize(where)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    random_qwen.synchronize(where)
    seconds = (time.perf_counter() - start) / args.steps

    head_dim = config.hidden_size // config.num_attention_heads
    attention_forward = sum(
        2 * 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * n * (n + 1) / 2
        for n in segments
    )  # QK^T and AV over the causal context of each token
    model_flops = 4 * matmul_params * row + 3 * attention_forward
    hardware_flops = model_flops + 2 * matmul_params * row + attention_forward
    result: dict[str, object] = {
        "mode": "gpu-7b" + ("-shrunk" if args.shrunk else ""),
        "device": torch.cuda.get_device_name() if where.type == "cuda" else "cpu",
        "attn_implementation": attn,
        "row_tokens": row,
        "segments": len(segments),
        "step_s": round(seconds, 3),
        "tokens_per_s": round(row / seconds),
        "model_tflops": round(model_flops / seconds / 1e12, 3),
    }
    if where.type == "cuda":
        peak = matmul_peak_tflops()
        result |= {
            "bf16_matmul_peak_tflops": round(peak, 1),
            "mfu": round(model_flops / seconds / 1e12 / peak, 3),
            "hfu": round(hardware_flops / seconds / 1e12 / peak, 3),
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "tasks", nargs="?", type=Path, default=None,
        help="tasks JSONL with first pages (default: ../shared's corpus, else bundled pages)",
    )  # fmt: skip
    parser.add_argument("--examples", type=int, default=48, help="examples trained on per mode")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-7b", action="store_true", help="7B LoRA MFU on a CUDA GPU")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (--gpu-7b)")
    parser.add_argument("--row-tokens", type=int, default=4096, help="packed row (--gpu-7b)")
    parser.add_argument("--shrunk", action="store_true", help="--gpu-7b's model shrunk (CPU)")
    args = parser.parse_args()
    print(json.dumps(gpu_7b_bench(args) if args.gpu_7b else cpu_bench(args), indent=2))


if __name__ == "__main__":
    main()
