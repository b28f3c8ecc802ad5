"""Data: tasks, datasets and builders."""
