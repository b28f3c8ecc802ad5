"""Chat examples to token ids and labels: loss on what the assistant writes, nothing else.

**Which tokens are learned.** The conversation is rendered with the model's own chat
template, then every assistant turn is located by rendering prefixes: the text before
turn ``i`` is the rendering of ``messages[:i]`` with the generation prompt, its text is
what ``messages[:i + 1]`` adds after that, up to and including the first special token
after the content (the end-of-turn token, so the model learns to stop). This needs no
``{% generation %}`` markers, which Qwen2.5's real template lacks (there transformers'
``return_assistant_tokens_mask`` silently gives an empty mask), and it matches the markers
where they exist (see the tests). Character spans become token labels through the fast
tokenizer's offsets, so the ids are exactly those of one tokenization of the whole text.

**Too long.** An example over ``max_length`` has the longest paragraph of its last user
turn (the page) cut from its end, by whole lines, until it fits; the target is never
shortened. An example whose target alone exceeds ``max_length``, or that cannot fit even
without the page, is dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.counters import Counters
from websynthesis.data.chat import ChatExample

IGNORE_INDEX = -100
Messages = Sequence[dict[str, str]]


@dataclass(frozen=True)
class Tokenized:
    """One training sequence: ``labels`` is ``IGNORE_INDEX`` wherever no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizeStats(Counters):
    """What tokenization did to a dataset; ``dropped`` is keyed by reason."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    target_tokens: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, *, last_only: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn (or the last)."""
    text = _render(tokenizer, messages, generation_prompt=False)
    special = _special_strings(tokenizer)
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    spans = []
    for index in turns[-1:] if last_only else turns:
        message = messages[index]
        prompt = _render(tokenizer, messages[:index], generation_prompt=True)
        upto = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        start = _common_prefix(prompt, upto)
        content_at = upto.find(message["content"], start) if message["content"] else -1
        after = content_at + len(message["content"]) if content_at >= 0 else start
        end = min(
            (upto.find(token, after) + len(token) for token in special if token in upto[after:]),
            default=len(upto),
        )
        if not text.startswith(upto[:end]):
            raise ValueError(
                "the chat template renders a conversation's prefix differently from the whole "
                f"conversation (turn {index}), so assistant turns cannot be located"
            )
        spans.append((start, end))
    return text, spans


def tokenize_messages(
    tokenizer: PreTrainedTokenizerBase, messages: Messages, *, mask_history: bool = True
) -> Tokenized:
    """Token ids of the rendered conversation; labels on assistant turns (the last only
    when ``mask_history``), end-of-turn token included."""
    text, spans = render_with_spans(tokenizer, messages, last_only=mask_history)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for position, (begin, finish) in enumerate(encoded["offset_mapping"]):
        if any(begin < end and finish > start for start, end in spans):
            labels[position] = ids[position]
    return Tokenized(ids, labels)


def fit_example(
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    *,
    max_length: int,
    mask_history: bool = True,
) -> tuple[Tokenized | None, str]:
    """The example within ``max_length`` tokens, and ``ok``, ``truncated`` or why it was dropped.

    Shortening is a binary search over how many characters of the page to keep, each
    candidate tokenized in full, so the result is exact for any tokenizer.
    """
    whole = tokenize_messages(tokenizer, messages, mask_history=mask_history)
    if len(whole) <= max_length:
        return whole, "ok"
    if sum(label != IGNORE_INDEX for label in whole.labels) > max_length:
        return None, "target_too_long"
    turn = _observation_turn(messages)
    if turn is None:
        return None, "prompt_too_long"
    content = messages[turn]["content"]
    start, end = _longest_paragraph(content)

    def attempt(keep: int) -> Tokenized:
        cut = content[start : start + keep]
        if keep < end - start and "\n" in cut:
            cut = cut[: cut.rindex("\n")]  # whole lines only
        shortened = [dict(m) for m in messages]
        shortened[turn]["content"] = content[:start] + cut + content[end:]
        return tokenize_messages(tokenizer, shortened, mask_history=mask_history)

    best, low, high = None, 0, end - start - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = attempt(middle)
        if len(candidate) <= max_length:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return (best, "truncated") if best is not None else (None, "prompt_too_long")


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Iterable[ChatExample],
    *,
    max_length: int,
    mask_history: bool = True,
) -> tuple[list[Tokenized], TokenizeStats]:
    """Every example fitted to ``max_length``; dropped ones are counted in the stats."""
    kept, stats = [], TokenizeStats()
    for example in examples:
        stats.examples += 1
        tokenized, outcome = fit_example(
            tokenizer, example.messages, max_length=max_length, mask_history=mask_history
        )
        if tokenized is None:
            stats.dropped[outcome] += 1
            continue
        stats.truncated += outcome == "truncated"
        stats.kept += 1
        stats.tokens += len(tokenized)
        stats.target_tokens += sum(label != IGNORE_INDEX for label in tokenized.labels)
        kept.append(tokenized)
    return kept, stats


def _render(tokenizer: PreTrainedTokenizerBase, messages: Messages, generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix: where the assistant turn starts."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def _special_strings(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every special token's text (``<|im_end|>``, ``<|eot_id|>``...): turn ends are among them."""
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens))


def _observation_turn(messages: Messages) -> int | None:
    """The last user turn before the last assistant turn: where the current page is."""
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    users = [i for i in range(last_assistant) if messages[i]["role"] == "user"]
    return users[-1] if users else None


def _longest_paragraph(text: str) -> tuple[int, int]:
    """Character span of the longest blank-line-separated block (the page in a prompt)."""
    best, position = (0, 0), 0
    for block in text.split("\n\n"):
        if len(block) > best[1] - best[0]:
            best = (position, position + len(block))
        position += len(block) + 2
    return best
