"""TextUI warm-up data (WebSynthesis stage 1): what a page is, what its elements do, and what
an action changes on it.

Three kinds of example, each asked under the student's system prompt (``textui_system``) with
the page shown as the policy is shown pages (cut to its ``observation_chars``):

* **dense captioning**, page -> description, and **element functionality**, page + one
  interactive element -> what it does: text a model must write, so a *teacher* model writes
  it (:func:`ask_teacher`), with its own prompts (``textui_teacher_system`` and
  ``textui_*_teacher``). An element that a transition shows being acted on is asked about with
  that evidence (the action and what it changed); other elements are drawn, seeded, from each
  page's named interactive elements.
* **state transition**, page + action -> what changed: *derived*, no model call. The target is
  :func:`~websynthesis.web.observation.diff_trees` rendered (``-`` removed, ``+`` added, ``~``
  changed), :data:`NO_CHANGE` when nothing changed, and cut at a line with a count of what was
  left out when longer than ``max_diff_chars``.

Teacher answers are untrusted. Each is checked (:func:`check_answer`) and an unusable one is
dropped with a :class:`Drop` reason, never written; outcomes are counted in the teacher
client's ``stats`` (under the mix names ``dense_caption`` and ``element_function``) and in
the builders' ``counts``. Requests go out in batches through the client's backend, so a
:class:`~websynthesis.backends.cache.CachedBackend` under the teacher's client replays a
rebuild, or a build killed half-way, without asking again.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from websynthesis.backends.types import Generation, GenerationRequest, Message, Sampling
from websynthesis.data.chat import ChatExample
from websynthesis.data.tasks import Task
from websynthesis.data.transitions import Transition
from websynthesis.roles.client import OK, ModelClient
from websynthesis.roles.prompts import format_observation, render
from websynthesis.web.actions import ELEMENT_KINDS, Action
from websynthesis.web.observation import AXNode, AXTree, diff_trees, parse_axtree

NO_CHANGE = "No visible change."
"""The state-transition target of an action that changed nothing."""

CAPTION, FUNCTION = "dense_caption", "element_function"
"""Mix names; also the role names the teacher's outcomes are counted under."""
_MIN_PROSE = 0.6  # share of letters and spaces below which an answer is not prose


# --- pages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """A structurally valid page to ask about, and where it was first seen."""

    tree: AXTree
    task_id: str
    source: str


def collect_pages(
    tasks: Iterable[Task], transitions: Iterable[Transition], counts: Counter[str]
) -> list[Page]:
    """Tasks' first pages, then every page of the transitions; each distinct page once.

    A page with structural errors (an imagined page gone wrong, a damaged file) is left out
    and counted: nothing is asked about a page the student should not learn from.
    """
    seen: set[str] = set()
    pages = []
    found = [(task.state, task.task_id, "tasks") for task in tasks if task.state]
    for t in transitions:
        found += [(t.observation, t.task_id, t.source), (t.next_observation, t.task_id, t.source)]
    for text, task_id, source in found:
        tree = parse_axtree(text)
        if tree.render() in seen:
            continue
        seen.add(tree.render())
        if tree.errors or not tree.nodes:
            counts["pages_malformed"] += 1
            continue
        pages.append(Page(tree, task_id, source))
    counts["pages"] += len(pages)
    return pages


def describe_change(before: AXTree, after: AXTree, max_chars: int) -> str:
    """What changed, as the rendered diff; cut at a line, with a count, past ``max_chars``."""
    lines = diff_trees(before, after).render().split("\n")
    if lines == [""]:
        return NO_CHANGE
    kept, used = [], 0
    for line in lines:
        used += len(line) + 1
        if used > max_chars and kept:
            left = len(lines) - len(kept)
            return "\n".join([*kept, f"... ({left} more change{'s' if left != 1 else ''})"])
        kept.append(line)
    return "\n".join(kept)


# --- the teacher -------------------------------------------------------------------------


class Drop(StrEnum):
    """Why a teacher answer was not used (counted; the answer is never written)."""

    BACKEND_ERROR = "backend_error"  # the request failed
    EMPTY = "empty"  # nothing but whitespace
    TRUNCATED = "truncated"  # cut off at max_new_tokens
    TOO_SHORT = "too_short"  # under min_chars
    COPIES_TREE = "copies_tree"  # two or more accessibility-tree lines: a copy, not an answer
    NOT_PROSE = "not_prose"  # mostly symbols or digits, or broken text (U+FFFD)


@dataclass(frozen=True)
class TeacherSettings:
    """How the teacher is asked (``data.textui.teacher``); ``adapter`` is the served model name."""

    adapter: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 64
    min_chars: int = 20

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> TeacherSettings:
        cfg = cfg or {}
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None})


@dataclass(frozen=True)
class Answer:
    """One teacher answer: ``text`` stripped when usable, else the raw text and why not."""

    text: str
    drop: Drop | None = None


def check_answer(text: str, truncated: bool, min_chars: int) -> Drop | None:
    """Why ``text`` cannot be a training target, or ``None`` when it can."""
    text = text.strip()
    if not text:
        return Drop.EMPTY
    if truncated:
        return Drop.TRUNCATED
    if len(text) < min_chars:
        return Drop.TOO_SHORT
    if sum(node.id is not None for node in parse_axtree(text).nodes) >= 2:
        return Drop.COPIES_TREE
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < _MIN_PROSE * len(text) or "\ufffd" in text:
        return Drop.NOT_PROSE
    return None


def ask_teacher(
    client: ModelClient, kind: str, prompts: Sequence[tuple[Message, ...]], s: TeacherSettings
) -> list[Answer]:
    """One checked answer per prompt, asked ``batch_size`` at a time; never raises for output."""
    return asyncio.run(_ask(client, kind, prompts, s))


async def _ask(
    client: ModelClient, kind: str, prompts: Sequence[tuple[Message, ...]], s: TeacherSettings
) -> list[Answer]:
    stats = client.stats.role(kind)
    answers: list[Answer] = []
    size = max(1, s.batch_size)
    for start in range(0, len(prompts), size):
        requests = [_request(client, kind, m, s) for m in prompts[start : start + size]]
        # The client's raw batch call: a backend failure becomes per-request errors and usage
        # is recorded. (No role kind parses free text, so ``client.run`` cannot be used.)
        generations = await client.generate(requests)
        stats.requests += len(requests)
        for generation in generations:
            answer = _checked(generation, s.min_chars)
            stats.samples += 1
            stats.truncated += generation.finish_reasons[:1] == ["length"]
            stats.attempts[answer.drop or OK] += 1
            stats.final[answer.drop or OK] += 1
            answers.append(answer)
    return answers


def _request(
    client: ModelClient, kind: str, messages: tuple[Message, ...], s: TeacherSettings
) -> GenerationRequest:
    sampling = Sampling(s.temperature, s.top_p, s.max_new_tokens)
    request = GenerationRequest(messages, sampling, model=s.adapter, role=kind)
    if s.temperature > 0:  # seeded as the client seeds its roles: a rebuild is a cache replay
        request = replace(request, sampling=replace(sampling, seed=client.seed_for(kind, request)))
    return request


def _checked(generation: Generation, min_chars: int) -> Answer:
    if generation.error is not None or not generation.texts:
        return Answer(generation.error or "", Drop.BACKEND_ERROR)
    text = generation.texts[0]
    drop = check_answer(text, generation.finish_reasons[:1] == ["length"], min_chars)
    return Answer(text if drop else text.strip(), drop)


# --- examples ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementQuestion:
    """An element of a page to explain, with what acting on it did when a transition shows it."""

    page: Page
    node: AXNode
    action: Action | None = None
    change: str | None = None


def element_questions(
    pages: Sequence[Page],
    transitions: Iterable[Transition],
    *,
    per_page: int,
    observation_chars: int | None,
    max_diff_chars: int,
    seed: int,
) -> list[ElementQuestion]:
    """Elements acted on in transitions (with their effect), then a seeded draw per page of
    named interactive elements, up to ``per_page`` per page; only elements the shown (cut)
    page holds, each (page, element) once."""
    by_text = {page.tree.render(): page for page in pages}
    asked: dict[str, list[ElementQuestion]] = {text: [] for text in by_text}
    for t in transitions:
        before, target = parse_axtree(t.observation), t.action.target
        page = by_text.get(before.render())
        if page is None or t.action.kind not in ELEMENT_KINDS or target is None:
            continue
        node = _shown(page, observation_chars).get(target)
        after = parse_axtree(t.next_observation)
        known = {q.node.id for q in asked[before.render()]}
        if node is None or after.errors or target in known:
            continue
        change = describe_change(page.tree, after, max_diff_chars)
        asked[before.render()].append(ElementQuestion(page, node, t.action, change))
    for text, page in by_text.items():
        shown, known = _shown(page, observation_chars), {q.node.id for q in asked[text]}
        pool = [n for n in page.tree.interactive() if n.name.strip() and n.id not in known]
        pool = [n for n in pool if n.id is not None and shown.get(n.id) is not None]
        rng = random.Random(f"{seed}:{hashlib.sha256(text.encode()).hexdigest()}")
        drawn = rng.sample(range(len(pool)), min(len(pool), max(0, per_page - len(known))))
        asked[text] += [ElementQuestion(page, pool[i]) for i in sorted(drawn)]
    return [question for text in by_text for question in asked[text]]


def _shown(page: Page, observation_chars: int | None) -> AXTree:
    tree = page.tree
    return tree if observation_chars is None else tree.truncate(max_chars=observation_chars)


def caption_examples(
    pages: Sequence[Page],
    teacher: ModelClient,
    settings: TeacherSettings,
    *,
    observation_chars: int | None,
    counts: Counter[str],
) -> list[ChatExample]:
    """Dense captions written by the teacher; unusable answers dropped and counted."""
    views = [format_observation(page.tree, observation_chars) for page in pages]
    return _distil(
        CAPTION,
        [render("textui_caption_user", page=view) for view in views],
        [render("textui_caption_teacher", page=view) for view in views],
        [{"task_id": page.task_id, "source": page.source} for page in pages],
        teacher,
        settings,
        counts,
    )


def function_examples(
    questions: Sequence[ElementQuestion],
    teacher: ModelClient,
    settings: TeacherSettings,
    *,
    observation_chars: int | None,
    counts: Counter[str],
) -> list[ChatExample]:
    """Element functionality written by the teacher, with observed effects as evidence."""
    students, teachers, metas = [], [], []
    for q in questions:
        view, element = format_observation(q.page.tree, observation_chars), q.node.body()
        assert q.node.id is not None  # element_questions only asks about elements with ids
        students.append(render("textui_function_user", page=view, element=element))
        teachers.append(
            render(
                "textui_function_teacher",
                page=view,
                element=element,
                surroundings=q.page.tree.highlight(q.node.id).render(),
                action=None if q.action is None else q.action.to_string(),
                change=q.change,
            )
        )
        meta = {"task_id": q.page.task_id, "source": q.page.source, "element": q.node.id}
        metas.append(meta | {"observed": q.action is not None})
    return _distil(FUNCTION, students, teachers, metas, teacher, settings, counts)


def transition_examples(
    transitions: Iterable[Transition],
    *,
    observation_chars: int | None,
    max_diff_chars: int,
    counts: Counter[str],
) -> list[ChatExample]:
    """Page + action -> the rendered diff: derived, no model call; each (page, action) once."""
    examples, seen = [], set()
    system = render("textui_system")
    for t in transitions:
        before, after = parse_axtree(t.observation), parse_axtree(t.next_observation)
        if before.errors or after.errors or not before.nodes or not after.nodes:
            counts["dropped/malformed"] += 1
            continue
        key = (before.render(), t.action)
        if key in seen:
            counts["dropped/duplicate"] += 1
            continue
        seen.add(key)
        user = render(
            "textui_transition_user",
            page=format_observation(before, observation_chars),
            action=t.action.to_string(),
            no_change=NO_CHANGE,
        )
        target = describe_change(before, after, max_diff_chars)
        meta = {"task_id": t.task_id, "source": t.source, "imagined": t.imagined}
        meta["action"] = t.action.to_string()
        examples.append(ChatExample(_chat(system, user, target), meta))
    counts["kept"] += len(examples)
    return examples


def _distil(
    kind: str,
    students: list[str],
    teachers: list[str],
    metas: list[dict[str, Any]],
    teacher: ModelClient,
    settings: TeacherSettings,
    counts: Counter[str],
) -> list[ChatExample]:
    """Ask the teacher the teacher prompts; pair each usable answer with its student prompt."""
    teacher_system = render("textui_teacher_system")
    prompts = [_chat(teacher_system, user) for user in teachers]
    answers = ask_teacher(teacher, kind, prompts, settings)
    system = render("textui_system")
    examples = []
    for user, meta, answer in zip(students, metas, answers, strict=True):
        if answer.drop is not None:
            counts[f"dropped/{answer.drop}"] += 1
            continue
        examples.append(ChatExample(_chat(system, user, answer.text), meta))
    counts["kept"] += len(examples)
    return examples


def _chat(system: str, user: str, answer: str | None = None) -> tuple[Message, ...]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return tuple(messages)
