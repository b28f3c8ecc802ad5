"""The server speaks the protocol it claims, checked with the official ``openai`` client.

``stop``, streaming, list-form content, ``/v1/completions``, every structured-output
dialect (turned into the grammar the backend enforces), and a 400 naming the field for
anything it does not honour. The echo backend shows what reaches the backend; the tiny
local model shows the constraints are enforced end to end.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx2
import openai
import pytest
import xgrammar as xgr
from test_serve import TOKEN, EchoBackend, running  # tests/ is on sys.path
from xgrammar import testing as xgr_testing

from websynthesis.backends.structured_outputs import StructuredOutputError, request_grammar
from websynthesis.backends.types import GenerationRequest, Sampling
from websynthesis.openai_api import cut_at_stop
from websynthesis.server import build_app, serve_in_background

USER = [{"role": "user", "content": "hello STOP more"}]
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}, "n": {"type": "integer"}},
    "required": ["answer", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[openai.OpenAI, EchoBackend, str]]:
    backend = EchoBackend()
    with running(backend, auth_token=TOKEN, batch_window_ms=2) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=10)
        with client:
            yield client, backend, url


def _refusal(client: openai.OpenAI, **kwargs) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="base-model", messages=USER, **kwargs)
    return caught.value


def test_stop_strings_cut_the_answer(echo) -> None:
    client, _, _ = echo
    plain = client.chat.completions.create(model="base-model", messages=USER)
    assert plain.choices[0].message.content == "None|hello STOP more|None|0"
    for stop in (" STOP", ["nothing", "more", " STOP"]):
        cut = client.chat.completions.create(model="base-model", messages=USER, stop=stop)
        assert cut.choices[0].message.content == "None|hello", stop
        assert cut.choices[0].finish_reason == "stop"
    # an answer cut by the token budget that never meets a stop string keeps its reason
    short = client.chat.completions.create(
        model="base-model", messages=USER, stop="absent", max_tokens=2
    )
    assert short.choices[0].finish_reason == "length"


def test_cut_at_stop_takes_the_earliest_stop() -> None:
    assert cut_at_stop("abcabc", "length", ["c", "b"]) == ("a", "stop")
    assert cut_at_stop("abc", "length", ["x"]) == ("abc", "length")
    assert cut_at_stop("", "stop", ["x"]) == ("", "stop")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1.0}, "frequency_penalty"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema"),
        ({"response_format": {"type": "weird"}}, "response_format.type"),
        ({"extra_body": {"structured_outputs": {"structural_tag": "x"}}},
         "structured_outputs.structural_tag"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
        ({"extra_body": {"ebnf": 'root ::= "a"', "regex": "a"}}, "regex"),
        ({"stop": [""]}, "stop"),
    ],
)  # fmt: skip
def test_what_the_server_does_not_honour_is_a_400_naming_it(echo, kwargs, field) -> None:
    client, backend, _ = echo
    before = len(backend.batches)
    error = _refusal(client, **kwargs)
    assert error.param == field, error.message
    assert len(backend.batches) == before  # refused before it reached the backend


def test_logprobs_a_backend_cannot_give_are_refused_not_left_out(echo) -> None:
    client, _, _ = echo
    assert _refusal(client, logprobs=True).param == "logprobs"
    assert _refusal(client, top_logprobs=2).param == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="base-model", prompt="go", logprobs=2)
    assert caught.value.param == "logprobs"


def test_neutral_values_of_unhonoured_fields_are_accepted(echo) -> None:
    client, _, _ = echo
    answer = client.chat.completions.create(
        model="base-model",
        messages=USER,
        user="someone",
        presence_penalty=0,
        frequency_penalty=0.0,
        logprobs=False,
        response_format={"type": "text"},
        extra_body={"top_k": -1, "repetition_penalty": 1.0},
    )
    assert answer.choices[0].message.content.startswith("None|hello")


def test_messages_in_list_form_and_the_developer_role(echo) -> None:
    client, backend, _ = echo
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": t} for t in ("hel", "lo")]},
    ]
    answer = client.chat.completions.create(model="policy", messages=messages)
    assert answer.choices[0].message.content == "policy|hello|None|0"
    sent = backend.batches[-1][0].messages
    assert sent == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"})
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="content"):
        client.chat.completions.create(
            model="policy", messages=[{"role": "user", "content": [image]}]
        )


def test_streaming_gives_the_same_answer_in_chunks(echo) -> None:
    client, _, _ = echo
    whole = client.chat.completions.create(model="base-model", messages=USER, n=2, seed=3)
    stream = client.chat.completions.create(
        model="base-model",
        messages=USER,
        n=2,
        seed=3,
        stop="more",
        stream=True,
        stream_options={"include_usage": True},
    )
    texts, reasons, usage = ["", ""], [None, None], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    expected = [cut_at_stop(c.message.content, "stop", ["more"])[0] for c in whole.choices]
    assert texts == expected and reasons == ["stop", "stop"]
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens


def test_completions_endpoint_numbers_choices_per_prompt(echo) -> None:
    client, backend, _ = echo
    answer = client.completions.create(model="policy", prompt=["first", "second"], n=2, seed=5)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert [c.text for c in answer.choices] == [
        "policy|first|5|0", "policy|first|5|1", "policy|second|5|0", "policy|second|5|1",
    ]  # fmt: skip
    assert answer.object == "text_completion"
    sent = sorted(backend.batches[-1], key=lambda r: r.prompt)
    assert [r.prompt for r in sent] == ["first", "second"] and sent[0].messages == ()
    assert sent[0].sampling.max_new_tokens == 16  # OpenAI's default for completions
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="base-model", prompt="go", stream=True, stop="|0"
        )
    )
    assert streamed == "None|go|None"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="base-model", prompt="go", echo=True)
    assert caught.value.param == "echo"


def test_every_dialect_reaches_the_backend_as_one_grammar(echo) -> None:
    client, backend, _ = echo
    schema_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    asks = {
        "response_format": {"response_format": schema_format},
        "vllm": {"extra_body": {"structured_outputs": {"json": SCHEMA}}},
        "vllm_legacy": {"extra_body": {"guided_json": SCHEMA}},
        "sglang": {"extra_body": {"json_schema": json.dumps(SCHEMA)}},
    }
    for name, kwargs in asks.items():
        client.chat.completions.create(model="base-model", messages=USER, **kwargs)
        grammar = xgr.Grammar.from_ebnf(backend.batches[-1][0].grammar)
        assert xgr_testing._is_grammar_accept_string(grammar, '{"answer": "yes", "n": 3}'), name
        assert not xgr_testing._is_grammar_accept_string(grammar, '{"answer": "maybe", "n": 3}')
        assert not xgr_testing._is_grammar_accept_string(grammar, '{"answer": "no"}')
    client.chat.completions.create(
        model="base-model", messages=USER, response_format={"type": "json_object"}
    )
    grammar = xgr.Grammar.from_ebnf(backend.batches[-1][0].grammar)
    assert xgr_testing._is_grammar_accept_string(grammar, '{"any": [1, 2]}')
    assert not xgr_testing._is_grammar_accept_string(grammar, "not json")


@pytest.mark.parametrize(
    ("fields", "good", "bad"),
    [
        ({"grammar": 'root ::= "a" "b"*'}, "abbb", "ba"),
        ({"ebnf": 'root ::= "x" | "y"'}, "y", "xy"),
        ({"regex": "[0-9]{3}-[a-z]+"}, "123-ab", "12-ab"),
        ({"guided_regex": "(yes|no)"}, "no", "maybe"),
        ({"guided_choice": ["left", 'say "hi"']}, 'say "hi"', "right"),
        ({"structured_outputs": {"choice": ["a b", "c"]}}, "a b", "ab"),
        ({"structured_outputs": {"regex": "z+"}}, "zzz", "zy"),
        ({"guided_grammar": 'root ::= [a-c]+'}, "cab", "cad"),
    ],
)  # fmt: skip
def test_request_grammar_means_what_each_dialect_means(fields, good, bad) -> None:
    grammar = xgr.Grammar.from_ebnf(request_grammar(fields))
    assert xgr_testing._is_grammar_accept_string(grammar, good)
    assert not xgr_testing._is_grammar_accept_string(grammar, bad)


def test_request_grammar_refuses_what_it_cannot_enforce() -> None:
    assert request_grammar({}) is None
    assert request_grammar({"response_format": {"type": "text"}, "grammar": None}) is None
    for fields, field in [
        ({"grammar": 'root ::= "a"', "guided_choice": ["a"]}, "guided_choice"),
        ({"guided_choice": []}, "guided_choice"),
        ({"structured_outputs": {"json": SCHEMA, "regex": "a"}}, "structured_outputs"),
        ({"structured_outputs": {"json": {"type": "no-such-type"}}}, "structured_outputs.json"),
        ({"ebnf": "  "}, "ebnf"),
    ]:
        with pytest.raises(StructuredOutputError) as caught:
            request_grammar(fields)
        assert caught.value.field == field, fields


def test_unknown_fields_on_the_wire_are_refused_by_name(echo) -> None:
    _, _, url = echo
    body = {"model": "base-model", "messages": USER, "mirostat": 2}
    response = httpx2.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "mirostat"


# --- enforced end to end by the tiny local model ---------------------------------------------


@pytest.mark.slow
def test_the_tiny_model_answers_within_each_constraint(tiny_model_path: Path) -> None:
    from websynthesis.backends.local import LocalBackend
    from websynthesis.backends.openai_backend import OpenAIBackend
    from websynthesis.backends.types import generate

    backend = LocalBackend(str(tiny_model_path), device="cpu")
    app = build_app(backend, ["tiny"], batch_window_ms=20)
    try:
        with (
            serve_in_background(app) as url,
            openai.OpenAI(
                base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120
            ) as client,
        ):
            ask = {"model": "tiny", "messages": [{"role": "user", "content": "Pick."}]}
            picks = client.chat.completions.create(
                **ask, n=4, seed=1, temperature=1.0, extra_body={"guided_choice": ["red", "blue"]}
            )
            assert {c.message.content for c in picks.choices} <= {"red", "blue"}
            shaped = client.chat.completions.create(
                **ask, seed=2, temperature=1.0, max_tokens=12,
                extra_body={"structured_outputs": {"regex": "[a-c]{2,4}"}},
            )  # fmt: skip
            assert re.fullmatch("[a-c]{2,4}", shaped.choices[0].message.content)
            sglang = client.chat.completions.create(
                **ask, max_tokens=8, extra_body={"ebnf": 'root ::= "x" [0-9]'}
            )
            assert re.fullmatch("x[0-9]", sglang.choices[0].message.content)
            # logprobs: the model's own, the chosen token the likeliest under greedy
            scored = client.chat.completions.create(
                **ask, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
            )
            content = scored.choices[0].logprobs.content
            assert "".join(t.token for t in content) == scored.choices[0].message.content
            for token in content:
                assert len(token.top_logprobs) == 3 and token.logprob <= 0
                assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-5)
                values = [t.logprob for t in token.top_logprobs]
                assert values == sorted(values, reverse=True)
            picked = client.chat.completions.create(
                **ask, logprobs=True, extra_body={"guided_choice": ["red", "blue"]}
            )  # under a grammar the chosen token need not be the model's likeliest
            chosen = picked.choices[0].logprobs.content
            assert "".join(t.token for t in chosen) == picked.choices[0].message.content
            assert all(t.top_logprobs == [] for t in chosen)
            raw = client.completions.create(
                model="tiny", prompt="Once", max_tokens=5, temperature=0, logprobs=2
            )
            lp = raw.choices[0].logprobs
            assert "".join(lp.tokens) == raw.choices[0].text and len(lp.token_logprobs) == 5
            assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
            assert all(len(top) <= 2 for top in lp.top_logprobs)

            free = client.chat.completions.create(**ask, max_tokens=12, temperature=0)
            text = free.choices[0].message.content
            assert len(text) > 5
            cut = client.chat.completions.create(
                **ask, max_tokens=12, temperature=0, stop=text[3:5]
            )
            assert cut.choices[0].message.content == text[: text.index(text[3:5])]

            # raw prompts: the server's completions equal the backend's own, and the
            # OpenAI backend sends prompt requests to /v1/completions
            six = Sampling(max_new_tokens=6)
            prompt = GenerationRequest(messages=(), prompt="Once upon", sampling=six)
            direct = generate(backend, [prompt])[0]
            over_http = client.completions.create(
                model="tiny", prompt="Once upon", max_tokens=6, temperature=0
            )
            assert over_http.choices[0].text == direct.texts[0]
            assert over_http.usage.completion_tokens == direct.completion_tokens
            remote = OpenAIBackend("tiny", f"{url}/v1", api_key_env=None)
            try:
                assert generate(remote, [prompt])[0].texts == direct.texts
            finally:
                remote.close()
    finally:
        backend.close()
    plain = LocalBackend(str(tiny_model_path), device="cpu", cascade_decode=False)
    try:
        asked = replace(prompt, sampling=Sampling(max_new_tokens=4, logprobs=1))
        assert generate(plain, [asked])[0].error == (
            "bad_request: logprobs need the cascade decode (Qwen2 models)"
        )
    finally:
        plain.close()


def test_requests_for_logprobs_are_never_cached() -> None:
    from websynthesis.backends.cache import is_cacheable

    greedy = GenerationRequest(messages=({"role": "user", "content": "x"},))
    assert is_cacheable(greedy)
    assert not is_cacheable(replace(greedy, sampling=Sampling(logprobs=0)))
