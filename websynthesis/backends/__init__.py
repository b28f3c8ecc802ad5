"""Backends: what answers a :class:`~websynthesis.backends.types.GenerationRequest`.

A backend knows chat messages, sampling, grammars and adapters, not what a role is asking
for: the local transformers+peft model (``local``, with its prefill, cascade decode and
seeded sampling in ``prefill``, ``cascade``, ``sampling``; grammars enforced by
``constraints``), an OpenAI-compatible server (``openai_backend``), and the layers stacked on
either: a response cache, request batching, per-role routing, usage and cost accounting.
Layer: above ``web``; imports nothing of ``roles`` or above (``tests/test_layers.py``).
"""
