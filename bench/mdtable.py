"""Markdown tables, shared by the bench scripts (printing as they measure) and `report.py` (without torch)."""

from __future__ import annotations


def fmt(value: object) -> str:
    """Floats with 3 significant digits (whole numbers from 1000 on), NaN and None (no value) as a dash, the rest
    as `str`."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def row_line(values: list[object]) -> str:
    return "| " + " | ".join(fmt(v) for v in values) + " |"


def header_lines(columns: list[str]) -> list[str]:
    return [row_line(columns), "|" + "---|" * len(columns)]


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `columns`; a missing value is an empty cell."""
    return "\n".join(header_lines(columns) + [row_line([r.get(c, "") for c in columns]) for r in rows])
