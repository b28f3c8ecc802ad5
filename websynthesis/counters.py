"""The base of every ``*Stats`` dataclass: what one part of a run did, counted.

A run writes its parts' counters into ``stats.json`` and W&B, and a resumed or parallel run
adds another's to its own; both go through :class:`Counters`, so a new counter is one field,
not a field plus a line in a hand-written ``to_dict``. Fields are ints, floats or
:class:`~collections.Counter` (by kind or reason; written sorted).

(The search core's ``TreeStats`` stays a plain dataclass: the core imports nothing else of
the package.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Counters:
    """Serialisable, addable counters; subclasses only declare their fields."""

    def to_dict(self) -> dict[str, Any]:
        """The counters as JSON-ready values (a ``Counter`` as a dict sorted by key)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def add(self, other: Mapping[str, Any]) -> None:
        """Add another run's :meth:`to_dict` (a missing field adds nothing)."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), other.get(f.name)
            if isinstance(mine, Counter):
                mine.update(theirs or {})
            else:
                setattr(self, f.name, mine + (theirs or 0))


def _plain(value: Any) -> Any:
    return dict(sorted(value.items())) if isinstance(value, Counter) else value
