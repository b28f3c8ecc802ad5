"""A request's structured-output fields, in any of the dialects clients send, as one grammar.

Clients ask for constrained output in several shapes: OpenAI's ``response_format``
(``json_object`` or ``json_schema``), vLLM's ``structured_outputs`` (``json``, ``regex``,
``choice``, ``grammar``, ``json_object``) and its older ``guided_*`` fields, SGLang's
``ebnf``, ``regex`` and ``json_schema``, and our own ``grammar``. Every backend here takes
one EBNF grammar (:class:`~websynthesis.backends.types.GenerationRequest`'s ``grammar``), so
each shape is turned into that grammar with xgrammar's own converters: JSON Schema and
regular expressions mean what they mean to the servers that define them.

Why refuse rather than guess: a constraint the server does not enforce comes back as
unconstrained text with a 200, which is the silent failure a caller cannot see. So two
constraints in one request, an unknown key, or a schema that does not convert raise
:class:`StructuredOutputError` naming the field, which the server answers with a 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import xgrammar as xgr

# The request fields that carry a constraint, each dialect's own name for it.
FIELDS = (
    "grammar",  # ours: EBNF
    "response_format",  # OpenAI
    "structured_outputs",  # vLLM >= 0.10.2
    "guided_json",  # vLLM before structured_outputs
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "ebnf",  # SGLang
    "regex",
    "json_schema",
)
# vLLM's structured_outputs keys, each a constraint of its own kind
_VLLM_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_LEGACY = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


class StructuredOutputError(ValueError):
    """A constraint this server cannot enforce as asked; ``field`` names where it was."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def request_grammar(fields: Mapping[str, Any]) -> str | None:
    """The EBNF grammar (root rule ``root``) the request's constraint fields ask for.

    ``fields`` maps request field names to their values (absent or ``None``: not given).
    Returns ``None`` when the request is unconstrained (no field, or ``response_format``
    of type ``text``); raises :class:`StructuredOutputError` otherwise when it cannot.
    """
    given = {name: fields[name] for name in FIELDS if fields.get(name) is not None}
    constraints = {name: value for name, value in given.items() if not _is_plain_text(name, value)}
    if len(constraints) > 1:
        names = " and ".join(sorted(constraints))
        raise StructuredOutputError(sorted(constraints)[1], f"one constraint a request: {names}")
    if not constraints:
        return None
    [(name, value)] = constraints.items()
    if name == "grammar" or name == "ebnf":
        return _ebnf(name, value)
    if name == "response_format":
        return _response_format(value)
    if name == "structured_outputs":
        return _vllm(value)
    if name in _LEGACY:
        return _kind(name, _LEGACY[name], value)
    if name == "regex":
        return _kind(name, "regex", value)
    return _kind(name, "json", value)  # SGLang's json_schema: the schema as a JSON string


def _is_plain_text(name: str, value: Any) -> bool:
    return name == "response_format" and isinstance(value, Mapping) and value.get("type") == "text"


def _response_format(value: Any) -> str:
    field = "response_format"
    if not isinstance(value, Mapping):
        raise StructuredOutputError(field, "must be an object with a 'type'")
    kind = value.get("type")
    if kind == "json_object":
        return str(xgr.Grammar.builtin_json_grammar())
    if kind != "json_schema":
        raise StructuredOutputError(
            f"{field}.type", f"{kind!r} is not supported (text, json_object, json_schema)"
        )
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping) or "schema" not in spec:
        raise StructuredOutputError(f"{field}.json_schema", "must be an object with a 'schema'")
    return _kind(f"{field}.json_schema.schema", "json", spec["schema"])


def _vllm(value: Any) -> str:
    field = "structured_outputs"
    if not isinstance(value, Mapping):
        raise StructuredOutputError(field, "must be an object")
    given = {key: v for key, v in value.items() if v is not None and v is not False}
    unknown = sorted(set(given) - set(_VLLM_KINDS))
    if unknown:
        raise StructuredOutputError(
            f"{field}.{unknown[0]}", f"not supported (one of {', '.join(_VLLM_KINDS)})"
        )
    if len(given) != 1:
        raise StructuredOutputError(field, f"give exactly one of {', '.join(_VLLM_KINDS)}")
    [(kind, spec)] = given.items()
    if kind == "json_object":
        return str(xgr.Grammar.builtin_json_grammar())
    return _kind(f"{field}.{kind}", kind, spec)


def _kind(field: str, kind: str, spec: Any) -> str:
    """One constraint of ``kind`` (json, regex, choice, grammar) as EBNF."""
    if kind == "grammar":
        return _ebnf(field, spec)
    if kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
            raise StructuredOutputError(field, "must be a non-empty list of strings")
        return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in spec)
    try:
        if kind == "regex":
            if not isinstance(spec, str):
                raise StructuredOutputError(field, "must be a string (a regular expression)")
            return str(xgr.Grammar.from_regex(spec))
        schema = spec if isinstance(spec, str) else json.dumps(spec)
        return str(xgr.Grammar.from_json_schema(schema))
    except (RuntimeError, ValueError, TypeError) as error:  # xgrammar's conversion errors
        if isinstance(error, StructuredOutputError):
            raise
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise StructuredOutputError(field, f"does not convert to a grammar: {last}") from None


def _ebnf(field: str, spec: Any) -> str:
    if not isinstance(spec, str) or not spec.strip():
        raise StructuredOutputError(field, "must be a non-empty EBNF string")
    return spec
