"""Pipelines behind the entry points: each takes the composed config and does one job."""
