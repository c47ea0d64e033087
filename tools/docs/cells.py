"""Markdown helpers shared by the reference generators: text that renders as written.

Help strings and schema descriptions are plain text with `code` spans; outside the spans `<name>`
would be read as an HTML tag (and vanish), `*` as emphasis and `|` as a table cell's end.
"""

from __future__ import annotations

import re


def text(value: str) -> str:
    """`value` with <, >, * and | escaped outside code spans, on one line (for a table cell or a paragraph)."""
    parts = re.split(r"(`[^`]*`)", " ".join(value.split()))
    out = []
    for index, part in enumerate(parts):
        if index % 2 == 1:  # a code span: only the table's pipe needs escaping
            out.append(part.replace("|", "\\|"))
        else:
            out.append(part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                       .replace("*", "\\*").replace("|", "\\|"))
    return "".join(out)


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table; cells are used as given (escape them with `text` first)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def generated_note(source: str) -> str:
    """The line every generated page opens with, naming where its content comes from."""
    return (f"!!! note \"Generated\"\n    This page is generated from {source} each time the site is built "
            f"(`tools/docs/`), so it always matches the code.\n")
