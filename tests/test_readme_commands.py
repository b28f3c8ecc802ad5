"""Every command in the README's usage sections composes as written.

A README command that no longer composes (a renamed key, a group that moved, an override
the config does not declare) fails a user on day one, and nothing else would notice: the
entry points' end-to-end tests run their own overrides. So each ``python ...`` line of the
README's ``bash`` blocks is parsed and composed with Hydra, placeholders (``...``) left
out and a sweep (``-m a=1,2``) taken at its first value. The commands' runs in miniature
are the entry points' own tests (tests/test_entry_points.py, test_train_e2e.py,
test_capture.py, test_learning_evidence.py, test_coevolve*.py).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from websynthesis.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONFIG_OF = {
    "synthesize.py": "synthesize",
    "train.py": "train",
    "evaluate.py": "evaluate",
    "scripts/learning_evidence.py": "learning_evidence",
    "coevolve.py": "coevolve",
    "websynthesis.env.capture": "capture",
    "serve.py": "serve",
}


def readme_commands() -> list[str]:
    """The ``python`` commands of the README's bash blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        # a quoted override may span lines (data.external=[{...},\n {...}])
        joined = re.sub(r"\n\s+(?=[{\]])", " ", joined)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("python "):
                commands.append(line)
    return commands


def entry_and_overrides(command: str) -> tuple[str, list[str], bool]:
    words = shlex.split(command, comments=True)[1:]
    if words[0] == "-m" and words[1].startswith("websynthesis."):
        entry, words = words[1], words[2:]
    else:
        entry, words = words[0], words[1:]
    multirun = "-m" in words
    return entry, [w for w in words if w != "-m"], multirun


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each sweep override at its first value; placeholders (``key=...``) left out."""
    parser = OverridesParser.create()
    kept = []
    for text in overrides:
        if text.endswith("=..."):
            continue
        override = parser.parse_override(text)
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            text = f"{override.get_key_element()}={first}"
        kept.append(text)
    return kept


COMMANDS = readme_commands()


def test_the_readme_has_usage_commands_for_every_entry_point() -> None:
    entries = {entry_and_overrides(c)[0] for c in COMMANDS}
    assert set(CONFIG_OF) - {"serve.py"} <= entries, entries
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS)
def test_each_readme_command_composes(command: str) -> None:
    entry, overrides, _ = entry_and_overrides(command)
    if entry == "websynthesis.synthesis.view":  # argparse, not Hydra: its --help must work
        result = subprocess.run(
            [sys.executable, "-m", entry, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return
    assert entry in CONFIG_OF, f"a README command runs {entry}, which this test does not know"
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                config_name=CONFIG_OF[entry],
                overrides=first_of_sweeps(overrides),
                return_hydra_config=True,
            )
    finally:
        GlobalHydra.instance().clear()
    assert cfg.task_name
