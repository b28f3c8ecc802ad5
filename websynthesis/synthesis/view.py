"""Look at a searched tree: one self-contained HTML page per task.

    python -m websynthesis.synthesis.view RUN_DIR --task ID [--out FILE]

reads the task's line of ``RUN_DIR/trees.jsonl`` and writes (default
``RUN_DIR/view/<task>.html``) a page with no external assets: every node is a collapsible
``<details>`` showing its action, the reasoning behind it, its reward and the reason given,
its value Q, visits and terminal kind, and, for web trees, what changed on the page since its
parent (``diff_trees``) with the full page one click away. The best path is highlighted.

It lives beside the web search rather than in the search core, which knows nothing of pages:
page diffs are drawn only for states that carry an ``observation``, others are shown as
their JSON.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from websynthesis.io import atomic_write_text
from websynthesis.web.observation import diff_trees, parse_axtree

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; }
details { margin: 0.2em 0 0.2em 1.2em; border-left: 2px solid #ddd; padding-left: 0.6em; }
details.best { border-left-color: #2a9d4a; }
summary { cursor: pointer; }
summary code { background: #f3f3f3; padding: 0 0.3em; }
.terminal { color: #fff; border-radius: 3px; padding: 0 0.35em; font-size: 12px; }
.stop, .end_gate { background: #2a9d4a; } .dead_end, .world_error { background: #c0392b; }
.depth_limit, .world { background: #7f8c8d; }
.field { margin: 0.25em 0; } .label { color: #666; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }
.add { color: #1e7b34; } .del { color: #b03a2e; } .chg { color: #8a6d00; }
"""


def load_record(run_dir: Path | str, task_id: str) -> dict[str, Any]:
    """The ``trees.jsonl`` record of ``task_id`` (``KeyError`` naming the known ids if absent)."""
    path = Path(run_dir) / "trees.jsonl"
    known = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.endswith("\n"):
                break  # a torn last line: the task is not recorded
            record = json.loads(line)
            if record.get("task_id") == task_id:
                return dict(record)
            known.append(str(record.get("task_id")))
    shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
    raise KeyError(f"task {task_id!r} is not in {path} (it has: {shown or 'no task'})")


def render_html(record: Mapping[str, Any]) -> str:
    """The page for one ``trees.jsonl`` record (a searched or a skipped task)."""
    task_id = str(record.get("task_id"))
    tree = record.get("tree")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Search tree of {_e(task_id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Search tree of <code>{_e(task_id)}</code></h1>",
    ]
    if tree is None:
        parts.append(f"<p>Not searched: {_e(record.get('skipped'))}</p>")
    else:
        parts.append(_header(tree))
        nodes = tree["nodes"]
        children: dict[int | None, list[dict[str, Any]]] = {}
        for node in nodes:
            children.setdefault(node["parent"], []).append(node)
        by_id = {node["id"]: node for node in nodes}
        best = set(tree.get("best_path") or [])
        for root in children.get(None, []):
            parts.append(_node(root, children, by_id, best))
    parts.append("</body></html>")
    return "\n".join(parts)


def _header(tree: Mapping[str, Any]) -> str:
    config = tree.get("config", {})
    facts = {
        "stop reason": tree.get("stop_reason"),
        "iterations": tree.get("iterations"),
        "nodes": len(tree.get("nodes", [])),
        "seconds": round(float(tree.get("elapsed_s") or 0.0), 2),
        "reward scale": f"{config.get('low')}–{config.get('high')}",
        "end gate": config.get("end_gate"),
        "best path": tree.get("best_path") or "none (no success)",
    }
    items = "".join(
        f"<li><span class='label'>{_e(k)}:</span> {_e(v)}</li>" for k, v in facts.items()
    )
    error = f"<pre>{_e(tree['error'])}</pre>" if tree.get("error") else ""
    return f"<ul>{items}</ul>{error}"


def _node(
    node: Mapping[str, Any],
    children: Mapping[int | None, list[dict[str, Any]]],
    by_id: Mapping[int, Mapping[str, Any]],
    best: set[int],
) -> str:
    visits = node.get("visits") or 0
    q = node["value_sum"] / visits if visits else None
    terminal = node.get("terminal")
    action = node.get("action")
    summary = [
        f"<b>#{node['id']}</b>",
        f"<code>{_e(action)}</code>" if action is not None else "<i>root</i>",
        f"reward {_number(node.get('reward'))}" + ("" if node.get("reward_ok", True) else " ✗"),
        f"Q {_number(q)}",
        f"N {visits}",
    ]
    if terminal:
        summary.append(f"<span class='terminal {_e(terminal)}'>{_e(terminal)}</span>")
    body = []
    if node.get("thought"):
        body.append(_field("thought", f"<pre>{_e(node['thought'])}</pre>"))
    if node.get("reward_reason"):
        body.append(_field("reward reason", f"<pre>{_e(node['reward_reason'])}</pre>"))
    parent = by_id.get(node["parent"]) if node["parent"] is not None else None
    body.append(_page(node.get("state"), None if parent is None else parent.get("state")))
    body += [_node(child, children, by_id, best) for child in children.get(node["id"], [])]
    css = ' class="best"' if node["id"] in best else ""
    opened = " open" if node["parent"] is None or node["id"] in best else ""
    return (
        f'<details id="node-{node["id"]}"{css}{opened}><summary>{" · ".join(summary)}</summary>'
        + "".join(body)
        + "</details>"
    )


def _page(state: Any, parent_state: Any) -> str:
    """The page diff since the parent and the full page, for web states; else the state."""
    if not (isinstance(state, Mapping) and isinstance(state.get("observation"), str)):
        return _field("state", f"<pre>{_e(json.dumps(state, ensure_ascii=False))}</pre>")
    page = state["observation"]
    parts = []
    if isinstance(parent_state, Mapping) and isinstance(parent_state.get("observation"), str):
        parts.append(_field("page diff", _diff(parent_state["observation"], page)))
    parts.append(f"<details class='page'><summary>page</summary><pre>{_e(page)}</pre></details>")
    return "".join(parts)


def _diff(before: str, after: str) -> str:
    diff = diff_trees(parse_axtree(before), parse_axtree(after))
    if not diff:
        return "<pre>(unchanged)</pre>"
    lines = []
    for line in diff.render().splitlines():
        css = {"+": "add", "-": "del", "~": "chg"}.get(line[:1], "")
        lines.append(f"<span class='{css}'>{_e(line)}</span>")
    return "<pre>" + "\n".join(lines) + "</pre>"


def _field(label: str, content: str) -> str:
    return f"<div class='field'><span class='label'>{_e(label)}:</span>{content}</div>"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def default_out(run_dir: Path | str, task_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", task_id) or "task"
    return Path(run_dir) / "view" / f"{safe}.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a searched tree as a self-contained page.")
    parser.add_argument("run_dir", type=Path, help="a synthesize.py run dir (holds trees.jsonl)")
    parser.add_argument("--task", required=True, help="the task id")
    parser.add_argument("--out", type=Path, help="HTML file (default RUN_DIR/view/<task>.html)")
    args = parser.parse_args(argv)
    try:
        record = load_record(args.run_dir, args.task)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.run_dir, args.task)
    atomic_write_text(out, render_html(record))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
