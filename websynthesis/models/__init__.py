"""Model layer: backends (local transformers+peft, OpenAI-compatible), roles, prompts, cache."""
