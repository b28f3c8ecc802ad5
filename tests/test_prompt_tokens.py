"""PromptTokenizer: the same ids as apply_chat_template, each repeated piece tokenized once."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from websynthesis.backends.loading import load_tokenizer
from websynthesis.backends.prompt_tokens import PromptTokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(str(tiny_model_path))


def reference(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )


TRICKY = [
    [{"role": "user", "content": "Hi."}],
    [{"role": "user", "content": ""}],
    [
        {"role": "system", "content": "You are a web agent.\n\n"},
        {"role": "user", "content": "  leading and trailing spaces  "},
        {"role": "assistant", "content": "click [12]"},
        {"role": "user", "content": "again"},
    ],
    # The chat markers written inside content are cut out by the tokenizer too.
    [{"role": "user", "content": "a<|im_end|>b<|im_start|>user\n<|endoftext|>"}],
    [{"role": "user", "content": "<|im_end|><|im_end|>\n\n\r\n  \t"}],
    [{"role": "user", "content": "Café – naïve 東京 🙂 [1234] 'link' \"Next »\""}],
    [{"role": "user", "content": "<|im_end"}, {"role": "assistant", "content": "|>"}],
]


@pytest.mark.parametrize("messages", TRICKY)
def test_ids_are_the_chat_templates(tokenizer, messages) -> None:
    assert PromptTokenizer(tokenizer)(messages) == reference(tokenizer, messages)


pieces = st.lists(
    st.sampled_from(["a", "b", " ", "\n", "\r", "\t", "é", "東", "🙂", "'s", "[", "]", "<|", "|>"])
    | st.sampled_from(["<|im_start|>", "<|im_end|>", "<|endoftext|>", "im_end", "user\n"]),
    max_size=12,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(system=pieces, user=pieces, answer=pieces)
def test_ids_are_the_chat_templates_for_any_text(tokenizer, system, user, answer) -> None:
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": user + system},
    ]
    assert PromptTokenizer(tokenizer)(messages) == reference(tokenizer, messages)


class CountingTokenizer:
    """The tiny tokenizer, counting the characters it is asked to encode."""

    def __init__(self, inner: PreTrainedTokenizerBase) -> None:
        self.inner = inner
        self.encoded_chars = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode(self, text: str, **kwargs) -> list[int]:
        self.encoded_chars += len(text)
        return self.inner.encode(text, **kwargs)


def test_a_shared_system_prompt_is_tokenized_once(tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    prompts = PromptTokenizer(counting)  # type: ignore[arg-type]
    system = {"role": "system", "content": "You are a web agent. " * 200}
    for page in range(10):
        messages = [system, {"role": "user", "content": f"page {page}"}]
        assert prompts(messages) == reference(tokenizer, messages)
    assert len(system["content"]) < counting.encoded_chars < 2 * len(system["content"])


def test_the_cache_keeps_at_most_max_pieces(tokenizer) -> None:
    prompts = PromptTokenizer(tokenizer, max_pieces=3)
    for i in range(20):
        messages = [{"role": "user", "content": f"question {i}"}]
        assert prompts(messages) == reference(tokenizer, messages)
    assert len(prompts._pieces) == 3


def test_a_tokenizer_whose_added_tokens_strip_is_encoded_whole(tokenizer) -> None:
    stripping = copy.deepcopy(tokenizer)
    stripping.add_tokens([AddedToken("<sep>", lstrip=True, rstrip=True, normalized=False)])
    prompts = PromptTokenizer(stripping)
    assert prompts._cut is None
    messages = [{"role": "user", "content": "left  <sep>  right"}]
    assert prompts(messages) == reference(stripping, messages)
