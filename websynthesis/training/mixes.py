"""The training mixes that curriculum stages name, built from the data config (``data.``).

============================  ==========================================  =================
mix                           built from                                  target
============================  ==========================================  =================
``dense_caption``             pages: ``tasks``' first pages + transitions  teacher-written
``element_function``          the same pages; elements acted on in them    teacher-written
``state_transition``          transitions                                  derived: the diff
``world_model``               transitions                                  derived: next tree
``valuable``, ``rollback``    ``<trajectories_dir>/<mix>.jsonl``           synthesize.py's
``reward``                    ``episodes`` run dirs + live ``trees``       derived: outcome
``judge``                     the same, whole trajectories                derived: outcome
============================  ==========================================  =================

For every mix: ``train_files.<mix>`` (a chat JSONL), when set, *replaces* what would be
built (a prebuilt or hand-made mix), and ``external`` entries with ``mix: <mix>`` are added.
Every example comes back with ``meta.mix`` set, in a deterministic order (teacher answers
replay from the response cache; element draws are seeded with ``seed``). An empty mix is an
error: a stage trained on nothing is a misconfiguration. ``scale`` is not applied here: the
training data module subsamples each stage after drawing its validation split.

Transitions come from ``transitions`` (files from evaluate.py: real unless a row says
otherwise) and ``external`` entries of format ``os_genesis`` (real); with ``imagined: true``
also from ``<trajectories_dir>/transitions.jsonl`` (synthesize.py: imagined), and imagined rows
of the other files are kept. They feed every transition-based mix, pages included.

``reward`` and ``judge`` (:mod:`websynthesis.training.reward_data`) read ``episodes`` (evaluate.py
run dirs: ``episodes.jsonl`` + ``transitions.jsonl``) and ``trees`` (synthesize.py
``world=browser`` run dirs or their ``trees.jsonl``; imagined trees are skipped), label each
step by the environment's outcomes (on a path to a success: high or the middle level; no
success below: low) in the student's reward and judge prompts and scales; ``reward.unresolved``
(``skip``/``low``: search leaves never resolved), ``reward.refused`` (``low``, the default: a
step whose action the live page refused is low; ``tree``: labelled like any other) and
``reward.balance`` (draw the larger of good and bad down to the smaller) tune them.

The teacher is a :class:`~websynthesis.roles.client.ModelClient` or a bare backend (wrap it in a
:class:`~websynthesis.backends.cache.CachedBackend` so rebuilds replay). Prompts follow the
student model config (``model_cfg``, i.e. ``cfg.model``): the world-model role's settings shape
world-model prompts, and the policy role's ``observation_chars`` cuts the pages of TextUI
prompts, as at inference. Without it, the roles' defaults apply.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from websynthesis.backends.types import Backend
from websynthesis.data.chat import ChatExample, read_chat_jsonl
from websynthesis.data.external import (
    ExternalFormat,
    ExternalSource,
    load_examples,
    load_os_genesis,
)
from websynthesis.data.tasks import Task, load_tasks
from websynthesis.data.textui import (
    Page,
    TeacherSettings,
    caption_examples,
    collect_pages,
    element_questions,
    function_examples,
    transition_examples,
)
from websynthesis.data.transitions import Transition, read_transitions
from websynthesis.data.world_model_data import world_model_examples
from websynthesis.io import DataFileError
from websynthesis.roles.client import ModelClient, Role, RoleSettings
from websynthesis.synthesis.store import POLICY_KINDS
from websynthesis.training.reward_data import (
    judge_examples,
    labelled_steps,
    labelled_trajectories,
    read_outcomes,
    reward_examples,
)

log = logging.getLogger(__name__)

Builder = Callable[[Any, ModelClient | None, Any, Counter[str]], list[ChatExample]]


def build_mix(
    name: str,
    data_cfg: Any,
    teacher: ModelClient | Backend | None = None,
    *,
    model_cfg: Any = None,
    counts: Counter[str] | None = None,
) -> list[ChatExample]:
    """The examples of mix ``name`` (see the module docstring); ``counts`` gets what happened,
    as ``<mix>/<what>`` (``kept``, ``dropped/<reason>``, ``transitions``, ...)."""
    if name not in MIX_NAMES:
        raise ValueError(f"unknown mix {name!r}; mixes are {list(MIX_NAMES)}")
    if teacher is not None and not isinstance(teacher, ModelClient):
        teacher = ModelClient(teacher, {})
    local: Counter[str] = Counter()
    prebuilt = (data_cfg.get("train_files") or {}).get(name)
    if prebuilt:
        examples = list(read_chat_jsonl(prebuilt))
        local["empty_source"] += not examples
    else:
        examples = _BUILDERS[name](data_cfg, teacher, model_cfg, local)
    examples += _external_examples(name, data_cfg, local)
    # Empty without a source is a configuration error; an empty source file (a search that
    # found no rollback) is data: counted, and the stage fails only if all its mixes are empty.
    if not examples and not local["no_teacher"] and not local["empty_source"]:
        raise ValueError(
            f"mix {name!r} is empty: set data.train_files.{name}, add a data.external entry "
            f"with mix: {name}, or give it sources (see websynthesis.training.mixes)"
        )
    local["examples"] = len(examples)
    log.info("mix %s: %s", name, dict(sorted(local.items())))
    if counts is not None:
        counts.update({f"{name}/{key}": value for key, value in local.items()})
    return [ChatExample(e.messages, {**e.meta, "mix": name}) for e in examples]


def student_role(model_cfg: Any, name: str) -> Role:
    """Role ``name`` as the student model config sets it up (defaults without a config)."""
    roles = (model_cfg.get("roles") or {}) if model_cfg is not None else {}
    if name not in roles:
        return Role(name, RoleSettings(template=name))
    return Role(name, RoleSettings.from_config(roles[name], model_cfg.get("adapters") or {}))


def load_transitions(data_cfg: Any, counts: Counter[str]) -> list[Transition]:
    """Every configured transition; imagined ones (and synthesize.py's file) only with
    ``imagined: true``."""
    found: list[Transition] = []
    imagined = bool(data_cfg.get("imagined", False))
    for path in data_cfg.get("transitions") or []:
        found += read_transitions(path)
    trajectories = data_cfg.get("trajectories_dir")
    if imagined and trajectories and (Path(trajectories) / "transitions.jsonl").is_file():
        found += read_transitions(Path(trajectories) / "transitions.jsonl", imagined=True)
    for source in _external_sources(data_cfg):
        if source.format is ExternalFormat.OS_GENESIS:
            loaded = load_os_genesis(source.path, on_error=source.on_error)
            _count_skipped(source, loaded.skipped, counts)
            found += loaded.items
    if not imagined:
        counts["transitions_imagined_left_out"] += sum(t.imagined for t in found)
        found = [t for t in found if not t.imagined]
    counts["transitions"] += len(found)
    return found


# --- builders ----------------------------------------------------------------------------


def _dense_caption(
    data_cfg: Any, teacher: ModelClient | None, model_cfg: Any, counts: Counter[str]
) -> list[ChatExample]:
    if teacher is None:
        return _no_teacher("dense_caption", counts)
    pages = _pages(data_cfg, load_transitions(data_cfg, counts), counts)
    return caption_examples(
        pages,
        teacher,
        TeacherSettings.from_config(_textui(data_cfg).get("teacher")),
        observation_chars=_page_chars(model_cfg),
        counts=counts,
    )


def _element_function(
    data_cfg: Any, teacher: ModelClient | None, model_cfg: Any, counts: Counter[str]
) -> list[ChatExample]:
    if teacher is None:
        return _no_teacher("element_function", counts)
    transitions = load_transitions(data_cfg, counts)
    textui = _textui(data_cfg)
    questions = element_questions(
        _pages(data_cfg, transitions, counts),
        transitions,
        per_page=int(textui.get("elements_per_page", 3)),
        observation_chars=_page_chars(model_cfg),
        max_diff_chars=int(textui.get("max_diff_chars", 4000)),
        seed=_seed(data_cfg),
    )
    return function_examples(
        questions,
        teacher,
        TeacherSettings.from_config(textui.get("teacher")),
        observation_chars=_page_chars(model_cfg),
        counts=counts,
    )


def _state_transition(
    data_cfg: Any, teacher: ModelClient | None, model_cfg: Any, counts: Counter[str]
) -> list[ChatExample]:
    return transition_examples(
        load_transitions(data_cfg, counts),
        observation_chars=_page_chars(model_cfg),
        max_diff_chars=int(_textui(data_cfg).get("max_diff_chars", 4000)),
        counts=counts,
    )


def _world_model(
    data_cfg: Any, teacher: ModelClient | None, model_cfg: Any, counts: Counter[str]
) -> list[ChatExample]:
    settings = data_cfg.get("world_model") or {}
    return world_model_examples(
        load_transitions(data_cfg, counts),
        student_role(model_cfg, "world_model"),
        drop_renumbered=bool(settings.get("drop_renumbered", False)),
        counts=counts,
    )


def _trajectories(name: str) -> Builder:
    def build(
        data_cfg: Any, teacher: ModelClient | None, model_cfg: Any, counts: Counter[str]
    ) -> list[ChatExample]:
        folder = data_cfg.get("trajectories_dir")
        found = list(read_chat_jsonl(Path(folder) / f"{name}.jsonl")) if folder else []
        counts["empty_source"] += bool(folder) and not found  # a search that found none
        return found

    return build


def _outcome_mix(name: str) -> Builder:
    """``reward`` or ``judge``: steps or trajectories labelled by the environment's outcomes."""

    def build(
        data_cfg: Any, teacher: ModelClient | None, model_cfg: Any, counts: Counter[str]
    ) -> list[ChatExample]:
        episodes, trees = list(data_cfg.get("episodes") or []), list(data_cfg.get("trees") or [])
        if not episodes and not trees:
            return []  # no source: build_mix says what to set
        settings = data_cfg.get("reward") or {}
        role = student_role(model_cfg, name)
        outcomes = read_outcomes(episodes, trees, counts=counts)
        balance, seed = bool(settings.get("balance", False)), _seed(data_cfg)
        if name == "reward":
            unresolved = str(settings.get("unresolved", "skip"))
            refused = str(settings.get("refused", "low"))
            steps = labelled_steps(
                outcomes, role.settings.scale, unresolved=unresolved, refused=refused, counts=counts
            )
            found = reward_examples(steps, role, balance=balance, seed=seed, counts=counts)
        else:
            trajectories = labelled_trajectories(outcomes, counts=counts)
            found = judge_examples(trajectories, role, balance=balance, seed=seed, counts=counts)
        counts["empty_source"] += not found  # episodes with no usable step: data, not config
        return found

    return build


_BUILDERS: dict[str, Builder] = {
    "dense_caption": _dense_caption,
    "element_function": _element_function,
    "state_transition": _state_transition,
    "world_model": _world_model,
    **{kind: _trajectories(kind) for kind in POLICY_KINDS},
    "reward": _outcome_mix("reward"),
    "judge": _outcome_mix("judge"),
}
MIX_NAMES = tuple(_BUILDERS)


# --- helpers -----------------------------------------------------------------------------


def _no_teacher(name: str, counts: Counter[str]) -> list[ChatExample]:
    """A model-written mix without a teacher is left out (and counted), not an error: a
    stage of several mixes still trains on the derived ones, offline."""
    log.warning(
        "mix %s needs a teacher model (teacher=<backend config>); it is left out of this run",
        name,
    )
    counts["no_teacher"] += 1
    return []


def _pages(data_cfg: Any, transitions: list[Transition], counts: Counter[str]) -> list[Page]:
    pages = collect_pages(_tasks(data_cfg), transitions, counts)
    limit = _textui(data_cfg).get("max_pages")
    return pages if limit is None else pages[: int(limit)]


def _tasks(data_cfg: Any) -> list[Task]:
    source = data_cfg.get("tasks")
    if not source:
        return []
    limit = data_cfg.get("limit")
    tasks = load_tasks(source)
    return tasks if limit is None else tasks[: int(limit)]


def _textui(data_cfg: Any) -> Mapping[str, Any]:
    return data_cfg.get("textui") or {}


def _page_chars(model_cfg: Any) -> int | None:
    """Pages in TextUI prompts are cut as the policy's prompts cut them."""
    return student_role(model_cfg, "policy").settings.style.observation_chars


def _seed(data_cfg: Any) -> int:
    return int(data_cfg.get("seed", 0) or 0)


def _external_sources(data_cfg: Any) -> list[ExternalSource]:
    sources = [ExternalSource.from_config(entry) for entry in data_cfg.get("external") or []]
    for source in sources:
        if source.mix is not None and source.mix not in MIX_NAMES:
            raise ValueError(f"data.external {source.path}: unknown mix {source.mix!r}")
    return sources


def _external_examples(name: str, data_cfg: Any, counts: Counter[str]) -> list[ChatExample]:
    examples: list[ChatExample] = []
    for source in _external_sources(data_cfg):
        if source.mix == name:
            loaded = load_examples(source)
            _count_skipped(source, loaded.skipped, counts)
            counts["external"] += len(loaded.items)
            examples += loaded.items
    return examples


def _count_skipped(
    source: ExternalSource, skipped: list[DataFileError], counts: Counter[str]
) -> None:
    if skipped:
        log.warning("%s: skipped %d bad rows, the first: %s", source.path, len(skipped), skipped[0])
        counts["external_skipped"] += len(skipped)
