"""Bad input in bulk: every file the project reads, mutated, and what each reader did with it.

    python bench/fuzz_inputs.py [--inputs 300] [--seed 0] [--out fuzz_inputs.json]

Corpus-driven: each target starts from valid files of its format (built here from the
package's own data and writers) and reads thousands of mutants of them: JSON-aware changes
(a value swapped for another type, a key dropped or added, a value wrapped in a list) and
byte-level ones (cut short, a span deleted or doubled, NUL, stray quotes or brackets, bytes
that are not UTF-8), one to three at a time. The targets are the readers the jobs call:

- ``tasks``: a task file (``load_tasks``, WebArena JSON config and JSONL);
- ``chat``: chat JSONL (``read_chat_jsonl``); ``sft``, ``external_chat``, ``os_genesis``,
  ``websynthesis_rollback``: the released formats (:mod:`websynthesis.data.external`);
- ``transitions``: raw transitions (``read_transitions``);
- ``trees_resume``: a synthesis run dir's ``trees.jsonl`` and ``stats.json`` as a restart
  reads them (the store's repair and read, stale records, the run's statistics);
- ``episodes``: an evaluate.py run dir as the policy and reward data read it;
- ``overrides``: Hydra overrides of the three jobs' configs, composed.

An outcome is *accepted* (read, perhaps with lines skipped and logged), *typed* (the
project's :class:`~websynthesis.io.DataFileError` naming the file; for overrides, Hydra's or
OmegaConf's own error), or a *crash*: anything else, counted and kept under
``crashes`` with its input (goal: 0 crashes).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from websynthesis.config import register_configs
from websynthesis.data.chat import read_chat_jsonl
from websynthesis.data.episodes import episode_examples, read_episodes
from websynthesis.data.external import (
    load_chat,
    load_os_genesis,
    load_sft,
    load_websynthesis_rollback,
)
from websynthesis.data.tasks import load_tasks
from websynthesis.data.transitions import read_transitions
from websynthesis.io import DataFileError
from websynthesis.pipelines.synthesize import stale_records
from websynthesis.roles.client import Role, RoleSettings
from websynthesis.synthesis.stats import run_stats
from websynthesis.synthesis.store import RunStore, previous_stats
from websynthesis.training.reward_data import read_outcomes

REPO = Path(__file__).resolve().parents[1]
BEFORE = "Tab 0 (current): Shop\n\n[1] RootWebArea 'Shop' focused: True\n\t[1234] link 'Sale'"
AFTER = "Tab 0 (current): Sale\n\n[1] RootWebArea 'Sale' focused: True\n\t[77] heading 'Sale'"
STRAYS = [b"\x00", b"\xff\xfe", b'"', b"{", b"}", b"[", b"]", b"\n", b",", b"\\u12", b":", b" "]


# --- the valid corpus ------------------------------------------------------------------------


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def chat_rows() -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You are a web agent."},
                {"role": "user", "content": f"OBJECTIVE:\nfind {i}\n\nOBSERVATION:\n{BEFORE}"},
                {"role": "assistant", "content": f"Let's think. ```click [{1234}]```"},
            ],
            "meta": {"task_id": f"t{i}"},
        }
        for i in range(3)
    ]


def transition_rows() -> list[dict[str, Any]]:
    return [
        {
            "task_id": "shop",
            "observation": BEFORE,
            "action": "click [1234]",
            "next_observation": AFTER,
            "objective": "Open the sale",
            "history": [],
            "imagined": False,
        }
        for _ in range(2)
    ]


def reference_node(action: str, state: str, depth: int) -> dict[str, Any]:
    raw = f"Thinking. In summary, the next action I will perform is ```{action}```"
    return {"action": raw, "execute_action": action, "state": state, "trace": "<step-1>\n",
            "depth": depth, "reflection": "", "thinking": "Thinking."}  # fmt: skip


def corpus() -> dict[str, list[tuple[str, bytes]]]:
    """Valid files of each target, as (file name, bytes)."""
    demo = [task.to_config() for task in load_tasks("demo")[:3]]
    rollback = {
        "intent": "Open the sale",
        "failure": reference_node("click [9]", BEFORE, 2),
        "parent": reference_node("click [1234]", AFTER, 1),
        "correct": reference_node("click [77]", AFTER, 2),
    }
    triple = {"a11y_before": BEFORE, "action": "click [1234]", "a11y_after": AFTER,
              "website_name": "shop"}  # fmt: skip
    sft = [{"instruction": "Predict the page.", "input": BEFORE, "output": AFTER}] * 2
    return {
        "tasks": [("tasks.jsonl", jsonl(demo)), ("tasks.json", json.dumps(demo[0]).encode())],
        "chat": [("chat.jsonl", jsonl(chat_rows()))],
        "external_chat": [("chat.jsonl", jsonl([*chat_rows(), chat_rows()[0]["messages"]]))],
        "sft": [("sft.json", json.dumps(sft, indent=2).encode()), ("sft.jsonl", jsonl(sft))],
        "os_genesis": [("walk.json", json.dumps([triple, triple], indent=2).encode())],
        "websynthesis_rollback": [("0.json", json.dumps([rollback], indent=4).encode())],
        "transitions": [("transitions.jsonl", jsonl(transition_rows()))],
        "trees_resume": [("trees.jsonl", trees_jsonl()), ("stats.json", stats_json())],
        "episodes": [("episodes.jsonl", episodes_jsonl()), ("transitions.jsonl", steps_jsonl())],
    }


def trees_jsonl() -> bytes:
    counts = {"valuable": 1, "rollback": 0, "transitions": 1, "dropped": {}}
    summary = {"stop_reason": "iterations", "iterations": 3, "nodes": 4, "solved": False,
               "examples": counts}  # fmt: skip
    tree = {"stats": {"expansions": 3}, "nodes": [], "elapsed_s": 1.0}
    examples = {"valuable": [chat_rows()[0]], "rollback": [], "transitions": [chat_rows()[1]]}
    rows = [
        {"task_id": str(i), "task_key": "k", "summary": summary, "tree": tree, "examples": examples}
        for i in range(2)
    ]
    return jsonl(rows)


def stats_json() -> bytes:
    return json.dumps({"counters": {"usage": {"total": {"calls": 3}}}, "sessions": []}).encode()


def episodes_jsonl() -> bytes:
    row = {"task": "click-button", "seed": 1000, "attempt": 0, "success": True,
           "actions": ["click [1234]"], "error": None, "steps": 1}  # fmt: skip
    return jsonl([row, dict(row, attempt=1, success=False)])


def steps_jsonl() -> bytes:
    rows = [
        {"task_id": "click-button", "seed": 1000, "attempt": a, "step": 0, "observation": BEFORE,
         "action": "click [1234]", "thought": "t", "objective": "o", "next_observation": AFTER}
        for a in (0, 1)
    ]  # fmt: skip
    return jsonl(rows)


# --- mutations -------------------------------------------------------------------------------


def random_value(rng: random.Random) -> Any:
    return rng.choice(
        [None, True, 0, -1, 2**70, 1.5, float("1e308"), "", "x", "click [", [], [1, "a"], {},
         {"k": None}, "\ud800", "Tab 0 (current): \n", "[1] RootWebArea ''"]
    )  # fmt: skip


def mutate_value(value: Any, rng: random.Random) -> Any:
    """``value`` with one node somewhere inside it changed."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        choice = rng.random()
        copy = dict(value)
        if choice < 0.25:
            del copy[key]
        elif choice < 0.35:
            copy[f"{key}_extra"] = random_value(rng)
        else:
            copy[key] = mutate_value(copy[key], rng)
        return copy
    if isinstance(value, list) and value and rng.random() < 0.7:
        copy = list(value)
        index = rng.randrange(len(copy))
        if rng.random() < 0.2:
            del copy[index]
        else:
            copy[index] = mutate_value(copy[index], rng)
        return copy
    if rng.random() < 0.15:
        return [value]
    return random_value(rng)


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    text = data.decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    rows = [line.strip() for line in lines if line.strip()]
    if len(lines) > 1 and all(row.startswith(("{", "[")) for row in rows):
        index = rng.randrange(len(lines))
        try:
            lines[index] = json.dumps(mutate_value(json.loads(lines[index]), rng)) + "\n"
        except ValueError:
            pass
        return "".join(lines).encode("utf-8", "surrogatepass")
    try:
        return json.dumps(mutate_value(json.loads(text), rng)).encode("utf-8", "surrogatepass")
    except ValueError:
        return mutate_bytes(data, rng)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return rng.choice(STRAYS)
    at = rng.randrange(len(data))
    span = rng.randrange(1, 40)
    choice = rng.randrange(5)
    if choice == 0:
        return data[:at]
    if choice == 1:
        return data[:at] + data[at + span :]
    if choice == 2:
        return data[:at] + data[at : at + span] * 2 + data[at + span :]
    if choice == 3:
        return data[:at] + rng.choice(STRAYS) + data[at:]
    return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]


def mutant(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 3)):
        data = mutate_json(data, rng) if rng.random() < 0.6 else mutate_bytes(data, rng)
    return data


# --- the readers -----------------------------------------------------------------------------


def read_tasks(folder: Path, name: str) -> None:
    load_tasks(folder / name)


def read_resume(folder: Path, name: str) -> None:
    """What a synthesis restart does with its run dir before searching."""
    store = RunStore(folder)
    try:
        records = store.open()
        previous = previous_stats(store)
        keys = {str(i): "k" for i in range(3)}
        kept = store.supersede(stale_records(records, keys))
        run_stats(kept, 3, previous["counters"], previous["sessions"], [], {})
    finally:
        store.close()


def read_episode_data(folder: Path, name: str) -> None:
    role = Role("policy", RoleSettings("policy"))
    episode_examples(read_episodes(folder), role, counts=Counter())
    read_outcomes([folder], counts=Counter())


READERS: dict[str, Callable[[Path, str], object]] = {
    "tasks": read_tasks,
    "chat": lambda folder, name: list(read_chat_jsonl(folder / name)),
    "external_chat": lambda folder, name: load_chat(folder / name),
    "sft": lambda folder, name: load_sft(folder / name),
    "os_genesis": lambda folder, name: load_os_genesis(folder / name),
    "websynthesis_rollback": lambda folder, name: load_websynthesis_rollback(folder / name),
    "transitions": lambda folder, name: list(read_transitions(folder / name)),
    "trees_resume": read_resume,
    "episodes": read_episode_data,
}
OVERRIDES = {
    "synthesize": ["search.iterations=5", "model=tiny", "taskset.limit=3", "world=model",
                   "budget.tokens=1000", "model.batching.max_batch_size=8", "seed=3"],
    "train": ["+experiment=websynthesis", "curriculum.stages.0.max_steps=4",
              "data.max_length=512", "lora.r=8", "optim.lr=1e-4", "trainer.max_steps=3"],
    "evaluate": ["env=miniwob", "env.tasks=[click-test,enter-text]", "eval.attempts=2",
                 "eval.max_steps=3", "eval.wmla.enabled=true", "env.pool_size=2"],
}  # fmt: skip


@dataclass
class Tally:
    tried: int = 0
    accepted: int = 0
    typed: int = 0
    crashed: int = 0


def read_one(target: str, folder: Path, name: str) -> tuple[str, str]:
    """How ``target``'s reader took ``folder/name``: ``accepted``, ``typed`` or ``crashed``
    (with the error and where it came from)."""
    try:
        READERS[target](folder, name)
    except DataFileError as error:
        if str(folder) in str(error):
            return "typed", ""
        return "crashed", f"a DataFileError naming no file of the run: {error}"[:600]
    except Exception as error:  # the finding: anything but the typed error
        where = traceback.format_exc(limit=-3)[-900:]
        return "crashed", f"{error!r}"[:300] + "\n" + where
    return "accepted", ""


def fuzz_files(target: str, seeds: list[tuple[str, bytes]], count: int, rng: random.Random,
               crashes: list[dict[str, Any]]) -> Tally:  # fmt: skip
    tally = Tally()
    for _ in range(count):
        name, data = rng.choice(seeds)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for other, content in seeds:  # the run dir's other files, valid
                (folder / other).write_bytes(content)
            bad = mutant(data, rng)
            (folder / name).write_bytes(bad)
            outcome, error = read_one(target, folder, name)
        tally.tried += 1
        setattr(tally, outcome, getattr(tally, outcome) + 1)
        if outcome == "crashed" and sum(c["target"] == target for c in crashes) < 5:
            crashes.append({"target": target, "file": name, "error": error,
                            "input": bad[:2000].decode("utf-8", "replace")})  # fmt: skip
    return tally


def fuzz_overrides(count: int, rng: random.Random, crashes: list[dict[str, Any]]) -> Tally:
    tally = Tally()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for _ in range(count):
            job = rng.choice(sorted(OVERRIDES))
            chosen = rng.sample(OVERRIDES[job], 2)
            index = rng.randrange(len(chosen))
            chosen[index] = mutate_bytes(chosen[index].encode(), rng).decode("utf-8", "replace")
            tally.tried += 1
            try:
                compose(config_name=job, overrides=chosen)
                tally.accepted += 1
            except (HydraException, OmegaConfBaseException):
                tally.typed += 1
            except Exception as error:
                tally.crashed += 1
                if len([c for c in crashes if c["target"] == "overrides"]) < 5:
                    crashes.append({"target": "overrides", "job": job, "overrides": chosen,
                                    "error": repr(error)[:300]})  # fmt: skip
    GlobalHydra.instance().clear()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=300, help="mutants per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="fuzz_inputs.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # skipped lines are logged by design; millions of them
    rng = random.Random(args.seed)
    crashes: list[dict[str, Any]] = []
    tallies: dict[str, Tally] = {}
    for target, seeds in corpus().items():
        tallies[target] = fuzz_files(target, seeds, args.inputs, rng, crashes)
    tallies["overrides"] = fuzz_overrides(args.inputs, rng, crashes)
    print("| target | inputs | accepted | typed error | crashed |")
    print("|---|---|---|---|---|")
    for target, t in tallies.items():
        print(f"| {target} | {t.tried} | {t.accepted} | {t.typed} | {t.crashed} |")
    total = Tally(*(sum(getattr(t, f) for t in tallies.values()) for f in Tally.__annotations__))
    print(f"| all | {total.tried} | {total.accepted} | {total.typed} | {total.crashed} |")
    result = {"tallies": {k: v.__dict__ for k, v in tallies.items()}, "total": total.__dict__,
              "crashes": crashes, "seed": args.seed}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for crash in crashes:
        print(f"CRASH {crash['target']}: {crash['error']}", file=sys.stderr)
    sys.exit(1 if total.crashed else 0)


if __name__ == "__main__":
    main()
