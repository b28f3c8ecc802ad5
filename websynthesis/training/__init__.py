"""LoRA training for train.py: chat examples -> token labels -> batches -> Lightning stages.

``tokenize`` (assistant-only labels, truncation that spares the target), ``collate``
(token-budget batches, padding-free packing), ``datamodule`` (one stage's data),
``module`` (the LightningModule and PEFT adapter I/O), ``curriculum`` (stages in order,
adapter carried, resumable).
"""
