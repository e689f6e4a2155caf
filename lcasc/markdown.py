"""Markdown pieces shared by the sections of ``report.md``."""

from __future__ import annotations


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x) -> str:
    """A fraction as a percentage with two decimals; "–" for a missing value."""
    return "–" if x is None else f"{100 * x:.2f}"
