"""What a read skipped or noticed: bad lines per file, dropped literals, warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReadReport:
    """Counts of skipped input, keyed by file, plus human-readable warnings."""

    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: RDF triples whose object is a literal other than a label or description.
    literals_skipped: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, path: str | Path, count: int = 1) -> None:
        """Count ``count`` skipped lines (or dropped triples) of ``path``."""
        key = str(path)
        self.skipped[key] = self.skipped.get(key, 0) + count

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def summary(self) -> str:
        """One line for a CLI: skipped lines per file and the warnings."""
        parts = [f"{n} skipped in {path}" for path, n in self.skipped.items()]
        if self.literals_skipped:
            parts.append(f"{self.literals_skipped} literal-valued RDF triples skipped")
        parts.extend(self.warnings)
        return "; ".join(parts) if parts else "no problems"
