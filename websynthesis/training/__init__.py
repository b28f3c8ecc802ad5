"""LoRA training for train.py: training mixes -> token labels -> batches -> Lightning stages.

``mixes`` (each curriculum stage's sources: TextUI, world-model, valuable/rollback, reward
and judge data), ``reward_data`` (steps and trajectories labelled by the environment's
outcomes), ``tokenize`` (assistant-only labels, truncation that spares the target),
``collate`` (token-budget batches, padding-free packing), ``datamodule`` (one stage's data),
``module`` (the LightningModule and PEFT adapter I/O), ``curriculum`` (stages in order,
adapter carried, resumable).

Layer: reads ``data``, ``synthesis`` (tree records) and ``models``; ``evaluation`` and the
pipelines sit above it. See ``tests/test_layers.py``.
"""
