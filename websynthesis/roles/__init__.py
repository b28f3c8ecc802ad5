"""Roles: the policy, world model, reward model, judge and reflection, asking a backend.

Each role is a prompt (``prompts``, the Jinja templates in ``websynthesis/prompts/``), a
grammar for its answer (``grammar``) and a parser that turns untrusted model text into a
typed value or a counted failure (``parsing``); ``client`` puts them together
(:class:`~websynthesis.roles.client.ModelClient`: retries, outcome counts, usage).
Layer: above ``backends``; imports nothing of ``search`` or above (``tests/test_layers.py``).
"""
