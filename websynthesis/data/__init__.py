"""Records and their formats: tasks (WebArena configs, task instances), chat examples,
transitions, the evaluation logs and their episodes, TextUI and world-model examples, checked
policy examples, outside datasets.

Layer: above ``web``, ``models`` and ``search``; below ``env``, ``synthesis`` and everything
that reads run outputs (``training``'s mixes, ``evaluation``). See ``tests/test_layers.py``.
"""
