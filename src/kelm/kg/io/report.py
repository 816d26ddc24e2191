"""What a read skipped or noticed: bad lines and duplicate triples per file, triples of held-out
splits that name an entity or relation absent from train, dropped literals, warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ReadReport:
    """Counts of skipped input, keyed by file, plus human-readable warnings."""

    skipped: dict[str, int] = field(default_factory=dict)
    #: Repeated lines of one file (one split), stored once; keyed by file.
    duplicates: dict[str, int] = field(default_factory=dict)
    #: Valid/test triples naming an entity or relation absent from train, kept or dropped; keyed by split.
    unseen: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: RDF triples whose object is a literal other than a label or description.
    literals_skipped: int = 0

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def total_duplicates(self) -> int:
        return sum(self.duplicates.values())

    def duplicate(self, path: str | Path, count: int = 1) -> None:
        """Count ``count`` repeated triples of ``path`` that were stored once."""
        key = str(path)
        self.duplicates[key] = self.duplicates.get(key, 0) + count

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
        parts += [f"{n} duplicates in {path}" for path, n in self.duplicates.items() if n]
        if self.literals_skipped:
            parts.append(f"{self.literals_skipped} literal-valued RDF triples skipped")
        parts.extend(self.warnings)
        return "; ".join(parts) if parts else "no problems"
