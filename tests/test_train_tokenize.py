"""Assistant-only labels from any chat template, and truncation that spares the target."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from websynthesis.backends.loading import load_tokenizer
from websynthesis.data.chat import ChatExample
from websynthesis.training.tokenize import (
    IGNORE_INDEX,
    fit_example,
    tokenize_examples,
    tokenize_messages,
)

# Qwen2.5-7B-Instruct's chat template (tokenizer_config.json) without its tool-list header,
# verbatim otherwise: no {% generation %} markers.
QWEN25 = "".join(
    [
        "{%- if messages[0]['role'] == 'system' %}\n",
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n",
        "{%- else %}\n",
        "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\\n' }}\n",
        "{%- endif %}\n",
        "{%- for message in messages %}\n",
        '    {%- if (message.role == "user") or (message.role == "system" and not loop.first)'
        ' or (message.role == "assistant" and not message.tool_calls) %}\n',
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>'"
        " + '\\n' }}\n",
        '    {%- elif message.role == "assistant" %}\n',
        "        {{- '<|im_start|>' + message.role }}\n",
        "        {%- if message.content %}\n",
        "            {{- '\\n' + message.content }}\n",
        "        {%- endif %}\n",
        "        {%- for tool_call in message.tool_calls %}\n",
        "            {%- if tool_call.function is defined %}\n",
        "                {%- set tool_call = tool_call.function %}\n",
        "            {%- endif %}\n",
        '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n',
        "            {{- tool_call.name }}\n",
        '            {{- \'", "arguments": \' }}\n',
        "            {{- tool_call.arguments | tojson }}\n",
        "            {{- '}\\n</tool_call>' }}\n",
        "        {%- endfor %}\n",
        "        {{- '<|im_end|>\\n' }}\n",
        '    {%- elif message.role == "tool" %}\n',
        '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n',
        "            {{- '<|im_start|>user' }}\n",
        "        {%- endif %}\n",
        "        {{- '\\n<tool_response>\\n' }}\n",
        "        {{- message.content }}\n",
        "        {{- '\\n</tool_response>' }}\n",
        '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n',
        "            {{- '<|im_end|>\\n' }}\n",
        "        {%- endif %}\n",
        "    {%- endif %}\n",
        "{%- endfor %}\n",
        "{%- if add_generation_prompt %}\n",
        "    {{- '<|im_start|>assistant\\n' }}\n",
        "{%- endif %}\n",
    ]
)
# The same rendering with TRL-style markers around what the assistant writes.
QWEN25_MARKED = QWEN25.replace(
    ' or (message.role == "assistant" and not message.tool_calls) %}', " %}", 1
).replace(
    '    {%- elif message.role == "assistant" %}',
    '    {%- elif message.role == "assistant" and not message.tool_calls %}\n'
    "        {{- '<|im_start|>assistant\\n' }}{% generation %}"
    "{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}',
    1,
)

PAGE = "\n".join(f"\t[{i}] link 'Product number {i} in the catalogue'" for i in range(200))
CONVERSATION = (
    {"role": "system", "content": "You are a web agent."},
    {"role": "user", "content": "OBJECTIVE:\nbuy a fax\n\nOBSERVATION:\n[1] button 'Go'"},
    {"role": "assistant", "content": "\nLet's think. ```click [1]```"},
    {"role": "user", "content": "OBSERVATION:\n[2] textbox 'Search'"},
    {
        "role": "assistant",
        "content": "In summary, the next action I will perform is ```stop [$9]```",
    },
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path):
    return load_tokenizer(str(tiny_model_path))


def marker_mask(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return out["assistant_masks"]


def learned(tokenized) -> list[int]:
    return [int(label != IGNORE_INDEX) for label in tokenized.labels]


def test_labels_equal_the_tiny_templates_generation_mask(tokenizer) -> None:
    tokenized = tokenize_messages(tokenizer, CONVERSATION, mask_history=False)
    mask = marker_mask(tokenizer, CONVERSATION)
    assert sum(mask) > 0 and learned(tokenized) == mask
    assert tokenized.input_ids == tokenizer.apply_chat_template(list(CONVERSATION))["input_ids"]
    assert all(
        lab in (IGNORE_INDEX, i)
        for lab, i in zip(tokenized.labels, tokenized.input_ids, strict=True)
    )


def test_qwen25_template_without_markers_gives_the_marked_mask(tokenizer, tiny_model_path) -> None:
    plain, marked = load_tokenizer(str(tiny_model_path)), load_tokenizer(str(tiny_model_path))
    plain.chat_template, marked.chat_template = QWEN25, QWEN25_MARKED
    for messages in (CONVERSATION, CONVERSATION[1:]):
        text = plain.apply_chat_template(list(messages), tokenize=False)
        assert text == marked.apply_chat_template(list(messages), tokenize=False)
        # transformers' own mask is empty without markers: why spans are derived instead.
        assert sum(marker_mask(plain, messages)) == 0
        mask = marker_mask(marked, messages)
        assert learned(tokenize_messages(plain, messages, mask_history=False)) == mask


def test_end_of_turn_is_learned_and_nothing_after_it(tokenizer) -> None:
    tokenized = tokenize_messages(tokenizer, CONVERSATION, mask_history=False)
    ids, mask = tokenized.input_ids, learned(tokenized)
    ends = [i for i in range(len(ids) - 1) if mask[i] and not mask[i + 1]]
    assert len(ends) == 2
    for end in ends:
        assert tokenizer.convert_ids_to_tokens(ids[end]) == "<|im_end|>"
        assert tokenizer.decode(ids[end + 1]) == "\n"
    target = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m][-9:])
    assert target.endswith("```stop [$9]```<|im_end|>")


def test_mask_history_learns_the_last_turn_only(tokenizer) -> None:
    every = learned(tokenize_messages(tokenizer, CONVERSATION, mask_history=False))
    last = learned(tokenize_messages(tokenizer, CONVERSATION, mask_history=True))
    cut = max(i for i in range(len(every)) if every[i] and not every[i - 1])
    assert last == [0] * cut + every[cut:]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    turns=st.lists(
        st.tuples(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30)),
        min_size=1,
        max_size=3,
    ),
    system=st.booleans(),
)
def test_labels_match_markers_for_any_text(tokenizer, turns, system) -> None:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    tokenized = tokenize_messages(tokenizer, messages, mask_history=False)
    assert learned(tokenized) == marker_mask(tokenizer, messages)


def test_truncation_shortens_the_page_never_the_target(tokenizer) -> None:
    messages = (
        {"role": "user", "content": f"OBJECTIVE:\nbuy\n\nOBSERVATION:\n{PAGE}\n\nWhat next?"},
        {
            "role": "assistant",
            "content": "In summary, the next action I will perform is ```click [7]```",
        },
    )
    whole = tokenize_messages(tokenizer, messages)
    fitted, outcome = fit_example(tokenizer, messages, max_length=len(whole) // 3)
    assert outcome == "truncated" and fitted is not None
    assert len(whole) // 3 - 30 < len(fitted) <= len(whole) // 3  # a line is ~25 tokens
    target = [label for label in whole.labels if label != IGNORE_INDEX]
    assert [label for label in fitted.labels if label != IGNORE_INDEX] == target
    assert fitted.labels[-len(target) - 1 :] == whole.labels[-len(target) - 1 :]
    text = tokenizer.decode(fitted.input_ids)
    assert "OBJECTIVE:\nbuy" in text and "\n\nWhat next?" in text
    assert "[0] link" in text and "[199] link" not in text
    assert text.split("\n\nWhat next?")[0].endswith("in the catalogue'")  # a whole line


def test_examples_that_cannot_fit_are_dropped_and_counted(tokenizer) -> None:
    short = ChatExample(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}))
    long_target = ChatExample(
        ({"role": "user", "content": "hi"}, {"role": "assistant", "content": PAGE})
    )
    long_prompt = ChatExample(
        (
            {"role": "system", "content": PAGE},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "ok"},
        )
    )
    kept, stats = tokenize_examples(
        tokenizer, [short, long_target, long_prompt, short], max_length=64
    )
    assert len(kept) == 2 and stats.kept == 2 and stats.examples == 4
    assert stats.dropped == {"target_too_long": 1, "prompt_too_long": 1}
    assert stats.tokens == sum(len(k) for k in kept) and stats.truncated == 0


def test_a_template_that_rewrites_earlier_turns_is_refused(tokenizer, tiny_model_path) -> None:
    odd = load_tokenizer(str(tiny_model_path))
    odd.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
        "{{ m.content if loop.last or m.role != 'assistant' else '(earlier answer)' }}"
        "<|im_end|>\n{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
    )
    with pytest.raises(ValueError, match="cannot be located"):
        tokenize_messages(odd, CONVERSATION[1:], mask_history=False)
