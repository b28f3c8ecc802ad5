"""The README's demo: the pipeline in miniature, offline, on 2 CPU cores.

``make demo`` runs ``python -m websynthesis.demo``. It shows each stage that
exists on the bundled demo tasks and then runs the real entry point
(``synthesize.py +experiment=demo``) into ``outputs/demo/``:

1. load the demo tasks and parse their first pages (exact round trip checked);
2. read a policy's responses for them the way the search will: pull out the
   action, validate it against the page, and count what was rejected and why;
3. run ``synthesize.py`` on the same tasks.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from websynthesis.data.tasks import Task, load_tasks
from websynthesis.web.actions import ActionParseError, extract_action
from websynthesis.web.observation import parse_axtree

REPO_ROOT = Path(__file__).resolve().parents[1]

SAMPLE_RESPONSES: dict[str, list[str]] = {
    "demo-bookshop-search": [
        "Let's think step-by-step. The page has a search box [15]. I will type the author's "
        "name and press Enter. In summary, the next action I will perform is "
        "```type [15] [Ursula K. Le Guin] [1]```",
        "Let's think step-by-step. I could stop here, but the search has not run yet. "
        "In summary, the next action I will perform is ```click [16]```",
    ],
    "demo-forum-login": [
        "Let's think step-by-step. The username field is [10]. In summary, the next action "
        "I will perform is ```type [10] [marie] [0]```",
        "Let's think step-by-step. I will click the login button. In summary, the next action "
        "I will perform is ```click [99]```",
    ],
    "demo-shop-price": [
        "Let's think step-by-step. The price shown is $89.00. In summary, the next action I "
        "will perform is ```stop [$89.00]```",
        "Let's think step-by-step. I will go to the shop's home page first. In summary, the "
        "next action I will perform is ```goto [http://onestopmarket.com]```",
    ],
    "demo-repo-visibility": [
        "Let's think step-by-step. The visibility combobox is [14]. In summary, the next "
        "action I will perform is ```click [14]```",
        "The visibility should be private. Action: select [14] [Private]",
    ],
    "demo-map-directions": [
        "Let's think step-by-step. There is a directions link [33]. In summary, the next "
        "action I will perform is ```click [33]```",
        "Let's think step-by-step. I will type into the heading. In summary, the next action "
        "I will perform is ```type [30] [Schenley Park] [1]```",
    ],
}


def show_pages(console: Console, tasks: list[Task]) -> None:
    """Stage 1: parse each first page and check the exact round trip."""
    table = Table(title="1. Demo tasks and their first pages")
    for column in ("task", "intent", "nodes", "interactive", "round trip"):
        table.add_column(column)
    for task in tasks:
        assert task.state is not None
        tree = parse_axtree(task.state)
        same = "exact" if tree.render() == task.state else "DIFFERS"
        table.add_row(task.task_id, escape(task.intent[:48]), str(len(tree.nodes)),
                      str(len(tree.interactive())), same)
    console.print(table)


def show_responses(console: Console, tasks: list[Task]) -> Counter[str]:
    """Stage 2: the policy's responses as the search reads them; returns outcome counts."""
    table = Table(title="2. Policy responses → actions")
    for column in ("task", "action", "outcome"):
        table.add_column(column)
    outcomes: Counter[str] = Counter()
    for task in tasks:
        tree = parse_axtree(task.state or "")
        for response in SAMPLE_RESPONSES.get(task.task_id, []):
            try:
                action = extract_action(response)
            except ActionParseError as err:
                outcomes[f"unparseable:{err.reason}"] += 1
                table.add_row(task.task_id, "—", f"discarded ({err.reason})")
                continue
            check = action.validate(tree)
            outcome = "valid" if check.ok else f"invalid:{check.reason}"
            outcomes[outcome] += 1
            table.add_row(task.task_id, escape(action.to_string()),
                          "valid" if check.ok else f"discarded ({check.reason})")
    console.print(table)
    console.print(f"outcomes: {dict(outcomes)}")
    return outcomes


def run_synthesize(console: Console) -> None:
    """Stage 3: the real entry point on the same tasks."""
    console.rule("3. synthesize.py +experiment=demo")
    command = [sys.executable, str(REPO_ROOT / "synthesize.py"), "+experiment=demo",
               "hydra.run.dir=outputs/demo/synthesize"]
    subprocess.run(command, check=True, cwd=REPO_ROOT)


def main() -> None:
    console = Console()
    tasks = load_tasks("demo")
    show_pages(console, tasks)
    show_responses(console, tasks)
    run_synthesize(console)
    console.print("[bold green]demo finished[/]: outputs under outputs/demo/")


if __name__ == "__main__":
    main()
