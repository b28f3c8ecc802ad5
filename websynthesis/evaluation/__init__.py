"""Evaluation: the agent loop (with WebEvolver's world-model look-ahead), WebArena's
evaluators, success rate and pass@k, and world-model fidelity; run by ``evaluate.py``."""
