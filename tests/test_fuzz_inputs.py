"""Bad input in bulk (``bench/fuzz_inputs.py``, CI-sized): every reader meets mutants of its
own valid files and answers with the data, skipped lines, or the project's typed error naming
the file, never anything else. And the typed outcomes the fuzzing first found crashes for."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from websynthesis.data.episodes import latest_episodes
from websynthesis.io import DataFileError, iter_jsonl
from websynthesis.synthesis import RunStore, previous_stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import fuzz_inputs  # noqa: E402


@pytest.mark.slow
def test_no_mutant_of_any_input_file_crashes_its_reader(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    command = [sys.executable, str(REPO / "bench" / "fuzz_inputs.py"), "--inputs=60"]
    result = subprocess.run(
        [*command, "--seed=7", f"--out={out}"], capture_output=True, text=True, timeout=600
    )
    found = json.loads(out.read_text())
    assert result.returncode == 0, found["crashes"][:3]
    assert found["total"]["tried"] == 60 * len(found["tallies"]) and found["total"]["crashed"] == 0
    assert all(t["typed"] > 0 for name, t in found["tallies"].items() if name != "episodes")


def test_mutations_change_their_input() -> None:
    rng = random.Random(0)
    seeds = fuzz_inputs.corpus()
    changed = [
        fuzz_inputs.mutant(data, rng) != data for files in seeds.values() for _, data in files
    ]
    assert sum(changed) >= len(changed) - 1


def test_a_resumed_tree_record_of_the_wrong_shape_names_its_field(tmp_path: Path) -> None:
    (tmp_path / "trees.jsonl").write_bytes(
        fuzz_inputs.trees_jsonl().replace(b'"nodes": 4', b'"nodes": "4"')
    )
    store = RunStore(tmp_path)
    with pytest.raises(DataFileError, match=r"trees.jsonl:1: field 'summary.nodes'"):
        store.open()
    store.close()


@pytest.mark.parametrize(
    "stats",
    [[], {"counters": None}, {"counters": {"usage": 3}}, {"counters": {}, "sessions": 5},
     {"counters": {"usage": {"total": 0}}, "sessions": []}],
)  # fmt: skip
def test_statistics_of_another_shape_are_ignored_on_resume(tmp_path: Path, stats: object) -> None:
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    assert previous_stats(RunStore(tmp_path)) == {"counters": {}, "sessions": []}


def test_episode_lines_with_fields_of_other_types_are_skipped(tmp_path: Path) -> None:
    good = {"task": "t", "seed": 1, "attempt": 0, "success": True, "actions": ["click [1]"]}
    bad = [good | {"actions": 3}, good | {"success": "yes"}, good | {"seed": "1"}]
    path = tmp_path / "episodes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [*bad, good]))
    assert latest_episodes(path) == {("t", 1, 0): good}


def test_a_lone_surrogate_escape_is_a_typed_error() -> None:
    with pytest.raises(DataFileError, match=r"x.jsonl:2: a lone surrogate"):
        list(iter_jsonl('{"a": "\\ud83d\\ude00"}\n{"a": "\\ud800"}', "x.jsonl"))
