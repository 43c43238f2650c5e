"""What a worker did: counts for ``--exit-when-idle`` runs, the demo and the tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    results: Counter[str] = field(default_factory=Counter)
    verified: Counter[str] = field(default_factory=Counter)
    strategies: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    bytes_copied: int = 0

    def add(self, other: Mapping[str, Any]) -> None:
        """Add another worker's summary, as ``--summary-json`` wrote it."""
        for name in ("results", "verified", "strategies", "skipped", "dead_letters"):
            getattr(self, name).update(other.get(name) or {})
        self.bytes_copied += int(other.get("bytes_copied") or 0)

    def as_dict(self) -> dict[str, Any]:
        return {"results": dict(self.results), "verified": dict(self.verified),
                "strategies": dict(self.strategies), "skipped": dict(self.skipped),
                "dead_letters": dict(self.dead_letters), "bytes_copied": self.bytes_copied}
