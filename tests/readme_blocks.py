"""Generated blocks of README.md: the text between a start and an end marker, read and rewritten.

The generator scripts (tests/reliability_table.py, tests/family_table.py) own what goes inside their
block; this module owns how a block is found and replaced.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def read_block(start: str, end: str, text: str | None = None) -> str:
    """The block README.md holds now (markers included), or '' when it has none."""
    text = README.read_text() if text is None else text
    if start not in text or end not in text:
        return ""
    return text[text.index(start) : text.index(end) + len(end)]


def write_block(start: str, end: str, rendered: str, section: str) -> None:
    """Replace the block with `rendered`; exit with a message when README.md lacks the markers."""
    text = README.read_text()
    current = read_block(start, end, text)
    if not current:
        raise SystemExit(f"README.md has no '{start}' ... '{end}' block; add it under '{section}'")
    README.write_text(text.replace(current, rendered))
