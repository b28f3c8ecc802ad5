"""Outside data: released SFT files and OS-Genesis' raw web triples, read into our types.

Formats (``data.external`` entries are ``{path, format, mix, instruction, on_error}``):

* ``chat``: chat-format rows (:mod:`websynthesis.data.chat`), to :class:`ChatExample`; a row
  may also be a bare list of ``{role, content}`` messages, as WebEvolver's released SFT files
  (``webevolver_policy_sft.jsonl``, ``webevolver_world_model_sft.jsonl``) write some of theirs.
  A multi-turn row trains on its last assistant turn (``data.mask_history``).
* ``sft``: ``{"input", "output"}`` or ``{"instruction", "input", "output"}`` rows, the style
  of the released WebSynthesis files (``textui-*.json``, ``world-model-training-data-27k.json``,
  ``os_genesis_sft7k.json``), to :class:`ChatExample`: ``output`` is the assistant turn, and
  ``instruction`` becomes the system message (``instruction: system``, the default: in these
  files it is the task description a chat model expects there) or is put before ``input`` in
  the user message, separated by a blank line (``instruction: prefix``, the Alpaca layout). A
  row with an empty ``input`` always asks its instruction as the user message. Other keys are
  ignored.
* ``websynthesis_rollback``: the reference WebSynthesis "traceable" rows
  ``{"intent", "failure", "parent", "correct"}`` (``webmcts-ttraj/*.json``; each node
  ``{action, execute_action, state, trace, depth, reflection, ...}``), to the two examples
  their design intends (the reference converter never ran): on the failed node's page, its
  ``reflection`` then ``go_back``; then, with that ``go_back`` step in the trajectory, on the
  parent's page, the correct node's ``action``. Both ask in the reference's policy layout
  (``OBJECTIVE`` / ``TRAJECTORY`` / ``OBSERVATION``, like its valuable ``sft`` rows); a
  ``correct.execute_action`` that is not an action, or a missing node field, is a bad row.
* ``os_genesis``: raw web triples ``{"a11y_before", "action", "a11y_after"}`` (``action`` is an
  action string, or a list whose first item is one, as OS-Genesis' random walk records it;
  ``website_name`` and ``url``, if present, must be strings and name the task), to
  :class:`~websynthesis.data.transitions.Transition`.

A path is a file or a directory of ``*.json``/``*.jsonl`` files. A ``.jsonl`` file (or a
``.json`` file that turns out to hold one JSON value per line) is read line by line; any
other file is one JSON value: a list of rows, or a single row. A bad row is a
:class:`~websynthesis.io.DataFileError` naming the file, the line (for a JSON list: the line
its element starts on) and the field (for a JSON list: prefixed with the element's index,
``[3].output``); with ``on_error: skip`` it is left out and kept in :attr:`Loaded.skipped`.
A file that cannot be read or decoded as a whole is always an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from websynthesis.data.chat import ChatExample
from websynthesis.data.transitions import (
    Fail,
    Transition,
    action_field,
    chat_example,
    failer,
    page_field,
)
from websynthesis.io import DataFileError, check_unicode, list_element_lines, read_text

T = TypeVar("T")


class ExternalFormat(StrEnum):
    CHAT = "chat"
    SFT = "sft"
    WEBSYNTHESIS_ROLLBACK = "websynthesis_rollback"
    OS_GENESIS = "os_genesis"


class OnError(StrEnum):
    RAISE = "raise"
    SKIP = "skip"


class Instruction(StrEnum):
    """Where an ``sft`` row's ``instruction`` goes (see the module docstring)."""

    SYSTEM = "system"
    PREFIX = "prefix"


@dataclass(frozen=True)
class ExternalSource:
    """One ``data.external`` entry; ``mix`` names the mix its examples join (not for triples)."""

    path: str
    format: ExternalFormat
    mix: str | None = None
    instruction: Instruction = Instruction.SYSTEM
    on_error: OnError = OnError.RAISE

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> ExternalSource:
        """Read and check one entry; a bad entry is a ``ValueError`` that shows it."""
        try:
            source = cls(
                path=str(entry["path"]),
                format=ExternalFormat(entry["format"]),
                mix=entry.get("mix"),
                instruction=Instruction(entry.get("instruction") or Instruction.SYSTEM),
                on_error=OnError(entry.get("on_error") or OnError.RAISE),
            )
        except (KeyError, ValueError) as error:
            raise ValueError(f"bad data.external entry {dict(entry)}: {error}") from None
        if (source.format is ExternalFormat.OS_GENESIS) != (source.mix is None):
            raise ValueError(
                f"bad data.external entry {dict(entry)}: chat and sft files need `mix` "
                "(the mix they join); os_genesis triples are transitions and take none"
            )
        return source


@dataclass
class Loaded(Generic[T]):
    """What a file gave: the items, and the errors of the rows skipped (``on_error: skip``)."""

    items: list[T] = field(default_factory=list)
    skipped: list[DataFileError] = field(default_factory=list)


def load_examples(source: ExternalSource) -> Loaded[ChatExample]:
    """A ``chat`` or ``sft`` source as chat examples (``meta.source``: the file)."""
    if source.format is ExternalFormat.CHAT:
        return load_chat(source.path, on_error=source.on_error)
    if source.format is ExternalFormat.SFT:
        return load_sft(source.path, instruction=source.instruction, on_error=source.on_error)
    if source.format is ExternalFormat.WEBSYNTHESIS_ROLLBACK:
        return load_websynthesis_rollback(source.path, on_error=source.on_error)
    raise ValueError(f"{source.path}: {source.format} files hold transitions, not examples")


def load_chat(path: Path | str, *, on_error: OnError = OnError.RAISE) -> Loaded[ChatExample]:
    """Chat-format rows, validated as train.py validates them; ``meta.source`` defaults to
    the file."""

    def convert(row: Any, fail: Fail, where: Path, line: int) -> ChatExample:
        row = {"messages": row} if isinstance(row, list) else row  # WebEvolver's bare lists
        example = chat_example(row, fail, path=where, line=line)
        return ChatExample(example.messages, {"source": str(where), **example.meta})

    return _load(Path(path), convert, OnError(on_error))


def load_sft(
    path: Path | str,
    *,
    instruction: Instruction = Instruction.SYSTEM,
    on_error: OnError = OnError.RAISE,
) -> Loaded[ChatExample]:
    """``{instruction, input, output}`` rows as chat examples (see the module docstring)."""
    placement = Instruction(instruction)

    def convert(row: Any, fail: Fail, where: Path, line: int) -> ChatExample:
        return _sft_example(row, fail, placement, {"source": str(where)})

    return _load(Path(path), convert, OnError(on_error))


def load_websynthesis_rollback(
    path: Path | str, *, on_error: OnError = OnError.RAISE
) -> Loaded[ChatExample]:
    """The reference WebSynthesis rollback rows, two examples each (see the module docstring)."""

    def convert(row: Any, fail: Fail, where: Path, line: int) -> list[ChatExample]:
        return _rollback_examples(row, fail, {"source": str(where), "kind": "rollback"})

    return _load(Path(path), convert, OnError(on_error))


def load_os_genesis(path: Path | str, *, on_error: OnError = OnError.RAISE) -> Loaded[Transition]:
    """OS-Genesis raw web triples as real transitions (no action history: walks are not
    guaranteed to chain, so each triple stands alone)."""

    def convert(row: Any, fail: Fail, where: Path, line: int) -> Transition:
        return _triple(row, fail, str(where))

    return _load(Path(path), convert, OnError(on_error))


def _sft_example(row: Any, fail: Fail, placement: Instruction, meta: dict[str, Any]) -> ChatExample:
    if not isinstance(row, dict):
        raise fail(None, f"expected a JSON object, got {type(row).__name__}")
    output = row.get("output")
    if not isinstance(output, str) or not output.strip():
        raise fail("output", "expected a non-empty string" if output is not None else "missing")
    texts = {}
    for key in ("instruction", "input"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise fail(key, f"expected a string, got {type(value).__name__}")
        texts[key] = (value or "").strip()
    instruction, question = texts["instruction"], texts["input"]
    if not question and not instruction:
        raise fail("input", "no input and no instruction: nothing to ask")
    if not question or placement is Instruction.PREFIX:
        messages = [_user("\n\n".join(part for part in (instruction, question) if part))]
    else:
        messages = [{"role": "system", "content": instruction}] if instruction else []
        messages.append(_user(question))
    messages.append({"role": "assistant", "content": output})
    return ChatExample(tuple(messages), meta)


_REFERENCE_ASK = "OBJECTIVE:\n{intent}\n\nTRAJECTORY:\n{trace}\n\nOBSERVATION:\n{state}\n\n" \
    "What's the next action?"  # fmt: skip
_REFERENCE_ANSWER = "{reason} In summary, the next action I will perform is ```{action}```"
_REFERENCE_STEP = (
    "<step-{depth}>\nOBSERVATION:\n{state}\nREASON FOR ACTION:\n{reason}\nACTION:\n{action}\n"
    "</step-{depth}>\n"
)


def _rollback_examples(row: Any, fail: Fail, meta: dict[str, Any]) -> list[ChatExample]:
    if not isinstance(row, dict):
        raise fail(None, f"expected a JSON object, got {type(row).__name__}")
    intent = _text(row, "intent", fail)
    nodes = {}
    for name in ("failure", "parent", "correct"):
        node = row.get(name)
        if not isinstance(node, dict):
            got = "missing" if node is None else f"got {type(node).__name__}"
            raise fail(name, f"expected a search node object ({got})")
        nodes[name] = node
    failure, parent, correct = nodes["failure"], nodes["parent"], nodes["correct"]
    failed_trace = _text(failure, "trace", fail, "failure", blank=True)
    failed_page = page_field(failure, "state", _within(fail, "failure"))
    parent_page = page_field(parent, "state", _within(fail, "parent"))
    depth = failure.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise fail("failure.depth", "expected an integer")
    reflection = _text(failure, "reflection", fail, "failure", blank=True, default="").strip()
    answer = _text(correct, "action", fail, "correct")
    action_field(correct.get("execute_action"), "correct.execute_action", fail)
    went_back = failed_trace + _REFERENCE_STEP.format(
        depth=depth, state=failed_page, reason=reflection, action="go_back"
    )
    ask = _REFERENCE_ASK.format
    back = _REFERENCE_ANSWER.format(reason=reflection, action="go_back").strip()
    return [
        ChatExample(
            (_user(ask(intent=intent, trace=failed_trace, state=failed_page)),
             {"role": "assistant", "content": back}),
            meta | {"stage": "reflect"},
        ),
        ChatExample(
            (_user(ask(intent=intent, trace=went_back, state=parent_page)),
             {"role": "assistant", "content": answer}),
            meta | {"stage": "correct"},
        ),
    ]  # fmt: skip


def _within(fail: Fail, node: str) -> Fail:
    return lambda field, message: fail(f"{node}.{field}" if field else node, message)


def _text(
    node: dict[str, Any],
    key: str,
    fail: Fail,
    name: str = "",
    *,
    blank: bool = False,
    default: str | None = None,
) -> str:
    """``node[key]``, a string (non-blank unless ``blank``), or an error at ``name.key``."""
    value = node.get(key, default)
    if not isinstance(value, str) or (not blank and not value.strip()):
        got = "missing" if value is None else f"got {type(value).__name__}"
        field = f"{name}.{key}" if name else key
        raise fail(field, f"expected {'a' if blank else 'a non-empty'} string ({got})")
    return value


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _triple(row: Any, fail: Fail, source: str) -> Transition:
    if not isinstance(row, dict):
        raise fail(None, f"expected a JSON object, got {type(row).__name__}")
    action = row.get("action")
    field_name = "action"
    if isinstance(action, list):
        if not action:
            raise fail("action", "expected an action string or a non-empty list")
        action, field_name = action[0], "action[0]"
    names = {}
    for key in ("website_name", "url"):
        value = row.get(key, "")
        if not isinstance(value, str):
            raise fail(key, f"expected a string, got {type(value).__name__}")
        names[key] = value
    return Transition(
        observation=page_field(row, "a11y_before", fail),
        action=action_field(action, field_name, fail),
        next_observation=page_field(row, "a11y_after", fail),
        task_id=names["website_name"] or names["url"],
        source=source,
    )


# --- reading rows -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """A decoded row and where it is; ``error`` instead of a value for an undecodable line."""

    line: int
    prefix: str
    value: Any = None
    error: DataFileError | None = None


def _load(
    path: Path, convert: Callable[[Any, Fail, Path, int], T | list[T]], on_error: OnError
) -> Loaded[T]:
    """Every row of ``path``'s files through ``convert`` (one item per row, or a list)."""
    loaded: Loaded[T] = Loaded()
    for file in _files(path):
        for row in _rows(file):
            try:
                if row.error is not None:
                    raise row.error
                fail = failer(file, row.line, row.prefix)
                items = convert(row.value, fail, file, row.line)
                loaded.items.extend(items if isinstance(items, list) else [items])
            except DataFileError as error:
                if on_error is OnError.RAISE:
                    raise
                loaded.skipped.append(error)
    return loaded


def _files(path: Path) -> list[Path]:
    path = path.expanduser()
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
    if not files:
        raise DataFileError(path, None, None, "directory holds no *.json or *.jsonl files")
    return files


def _rows(path: Path) -> Iterator[_Row]:
    text = read_text(path)
    if path.suffix != ".jsonl":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # else: JSON Lines under a .json name
                message = f"invalid JSON ({error.msg})"
                raise DataFileError(path, error.lineno, None, message) from None
        else:
            check_unicode(document, text, path, None)
            yield from _document_rows(text, document)
            return
    # "\n" only: str.splitlines() would also split at U+2028 and friends inside strings.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
            check_unicode(value, raw, path, lineno)
        except json.JSONDecodeError as error:
            message = f"invalid JSON ({error.msg})"
            yield _Row(lineno, "", error=DataFileError(path, lineno, None, message))
        except DataFileError as error:
            yield _Row(lineno, "", error=error)
        else:
            yield _Row(lineno, "", value)


def _document_rows(text: str, document: Any) -> Iterator[_Row]:
    """The rows of one JSON value: each element of a list (with the line it starts on)."""
    if not isinstance(document, list):
        yield _Row(1 + text.count("\n", 0, len(text) - len(text.lstrip())), "", document)
        return
    lines = list_element_lines(text, len(document))
    for index, value in enumerate(document):
        yield _Row(lines[index], f"[{index}].", value)
