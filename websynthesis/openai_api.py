"""The OpenAI wire format :mod:`websynthesis.server` speaks: requests, their checks, answers.

Two endpoints, ``/v1/chat/completions`` and ``/v1/completions``, with the fields clients
of OpenAI, vLLM and SGLang send: sampling (``temperature``, ``top_p``, ``n``, ``seed``,
``max_tokens``), ``stop``, ``logprobs`` (chat: ``logprobs`` + ``top_logprobs``;
completions: ``logprobs: k``), ``stream`` (server-sent events, with ``stream_options``'
``include_usage``), list-form message ``content`` (text parts), and every structured-output
dialect (:mod:`websynthesis.backends.structured_outputs`).

Why a field is refused rather than ignored: a client that asks for something the server
does not do (a penalty, tools, an image) and gets a 200 reads an answer made
under other rules, with nothing to tell it so. So a field is either honoured, or neutral at
the value sent (``presence_penalty: 0``, ``user``, ``logprobs: false``), or a 400 naming
it (:func:`unsupported`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from websynthesis.backends.structured_outputs import FIELDS as CONSTRAINT_FIELDS
from websynthesis.backends.types import Generation, TokenLogprob

MAX_STOPS = 16  # OpenAI takes 4; vLLM and SGLang more


def _always(_: Any) -> bool:
    return True


def _off(value: Any) -> bool:
    return not value


def _equals(*neutral: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value in neutral


# Fields a request may carry that change nothing at the value given (other values are
# refused): bookkeeping, penalties at zero, tools absent, the extra samplers of vLLM and
# SGLang at their off value.
NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "user": _always,
    "metadata": _always,
    "service_tier": _always,
    "store": _off,
    "parallel_tool_calls": _always,
    "frequency_penalty": _equals(0),
    "presence_penalty": _equals(0),
    "repetition_penalty": _equals(1),
    "logit_bias": _off,
    "tools": _off,
    "functions": _off,
    "tool_choice": _equals("none", "auto"),
    "function_call": _equals("none", "auto"),
    "top_k": _equals(-1, 0),
    "min_p": _equals(0),
    "min_tokens": _equals(0),
    "best_of": _equals(1),
    "ignore_eos": _off,
    "include_stop_str_in_output": _off,
    "skip_special_tokens": _equals(True),
    "echo": _off,
    "suffix": _equals(""),
}


class TextPart(BaseModel):
    """One part of a list-form ``content``; only text parts reach a text model."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """A chat message; ``developer`` is OpenAI's newer name for ``system``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def plain(self) -> dict[str, str]:
        """The ``{"role", "content"}`` message a chat template takes."""
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Request(BaseModel):
    """What both endpoints take. Fields not declared here land in ``model_extra``, where
    :func:`unsupported` judges them."""

    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # the constraint fields (structured_outputs.FIELDS), in each dialect's own shape
    grammar: str | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    ebnf: str | None = None
    regex: str | None = None
    json_schema: str | None = None

    def constraint_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONSTRAINT_FIELDS}

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def wanted_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)  # OpenAI's and vLLM's default for completions
    logprobs: int | None = Field(None, ge=0, le=5)  # the top k alternatives, as OpenAI's

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def wanted_logprobs(self) -> int | None:
        return self.logprobs


def unsupported(request: _Request) -> tuple[str, str] | None:
    """``(field, message)`` for the first field the server cannot honour, else ``None``."""
    for name, value in (request.model_extra or {}).items():
        neutral = NEUTRAL.get(name)
        if neutral is None:
            return name, f"unsupported field {name!r}"
        if not neutral(value):
            return name, f"{name}={json.dumps(value)} is not supported by this server"
    stops = request.stops()
    if len(stops) > MAX_STOPS or not all(stops):
        return "stop", f"stop takes at most {MAX_STOPS} non-empty strings"
    if isinstance(request, CompletionRequest) and not request.prompts():
        return "prompt", "prompt must not be empty"
    if isinstance(request, ChatCompletionRequest) and request.top_logprobs and not request.logprobs:
        return "top_logprobs", "top_logprobs needs logprobs=true"
    return None


def cut_at_stop(text: str, reason: str, stops: Sequence[str]) -> tuple[str, str]:
    """``text`` up to the first stop string (not included, as OpenAI returns it) and its
    finish reason. The model decodes to its own end; the cut gives the answer the client
    would have had from a server that stopped there."""
    ends = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    if not ends:
        return text, reason
    return text[: min(ends)], "stop"


def tokens_within(logprobs: Sequence[TokenLogprob], length: int) -> list[TokenLogprob]:
    """The leading tokens whose text fits in ``length`` characters (a text cut at a stop
    string keeps the logprobs of the tokens it still holds)."""
    kept, used = [], 0
    for token in logprobs:
        used += len(token.token)
        if used > length:
            break
        kept.append(token)
    return kept


class Answer:
    """The generations of one request, cut at its stop strings, as bodies or stream chunks.

    ``generations`` holds one :class:`Generation` per prompt (one for a chat request);
    choice ``p * n + j`` is sample ``j`` of prompt ``p``, as OpenAI numbers them.
    """

    def __init__(
        self,
        chat: bool,
        model: str,
        generations: Sequence[Generation],
        stops: Sequence[str],
    ) -> None:
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices: list[tuple[str, str]] = []
        self.logprobs: list[list[TokenLogprob] | None] = []
        for generation in generations:
            reasons = generation.finish_reasons
            for j, text in enumerate(generation.texts):
                reason = reasons[j] if j < len(reasons) and reasons[j] else "stop"
                cut, reason = cut_at_stop(text, reason, stops)
                self.choices.append((cut, reason))
                given = generation.logprobs[j] if generation.logprobs is not None else None
                self.logprobs.append(None if given is None else tokens_within(given, len(cut)))
        prompt = sum(g.prompt_tokens for g in generations)
        completion = sum(g.completion_tokens for g in generations)
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def body(self) -> dict[str, Any]:
        """The whole answer (``stream=false``)."""
        choices = [
            {"index": i, **self._content(text), "finish_reason": reason, "logprobs": self._lp(i)}
            for i, (text, reason) in enumerate(self.choices)
        ]
        return self._envelope(choices, chunk=False) | {"usage": self.usage}

    def events(self, include_usage: bool) -> Iterator[str]:
        """The answer as server-sent events (``stream=true``), ending in ``data: [DONE]``.

        The server decodes whole answers in batches, so each choice's text comes as one
        chunk once decoded; a streaming client reads it as it reads any stream.
        """
        usage: dict[str, Any] = {"usage": None} if include_usage else {}
        for i, (text, reason) in enumerate(self.choices):
            if self.chat:
                opening = {"role": "assistant", "content": ""}
                yield _event(self._chunk(i, {"delta": opening}, None) | usage)
                content = self._chunk(i, {"delta": {"content": text}}, None, self._lp(i))
                yield _event(content | usage)
                yield _event(self._chunk(i, {"delta": {}}, reason) | usage)
            else:
                yield _event(self._chunk(i, {"text": text}, reason, self._lp(i)) | usage)
        if include_usage:
            yield _event(self._envelope([], chunk=True) | {"usage": self.usage})
        yield "data: [DONE]\n\n"

    def _content(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}

    def _chunk(
        self,
        index: int,
        part: Mapping[str, Any],
        reason: str | None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice = {"index": index, **part, "logprobs": logprobs, "finish_reason": reason}
        return self._envelope([choice], chunk=True)

    def _lp(self, index: int) -> dict[str, Any] | None:
        """Choice ``index``'s logprobs in the endpoint's shape (``None``: not asked)."""
        tokens = self.logprobs[index]
        if tokens is None:
            return None
        if self.chat:
            return {"content": [_chat_token(t) for t in tokens], "refusal": None}
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token.token)
        return {
            "tokens": [t.token for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.top) for t in tokens],
            "text_offset": offsets,
        }

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        if self.chat and chunk:
            kind = "chat.completion.chunk"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def _chat_token(token: TokenLogprob) -> dict[str, Any]:
    def entry(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    top = [entry(text, logprob) for text, logprob in token.top]
    return entry(token.token, token.logprob) | {"top_logprobs": top}


def _event(data: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
