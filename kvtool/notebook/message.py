"""The one-line messages under the notebook's widgets: what happened, coloured by how it went."""

from __future__ import annotations

import html

COLOURS = {"info": "inherit", "ok": "#1a7f37", "error": "#cf222e", "warn": "#9a6700"}


def message_html(text: str, kind: str = "info") -> str:
    """`text` (escaped; newlines kept) in a div the browser tests find by its class; "" for no message. Callers
    mask secrets first: this never sees what must not be shown."""
    if not text:
        return ""
    body = html.escape(text).replace("\n", "<br>")
    return f"<div class='kvt-message-{kind}' style='color:{COLOURS[kind]}'>{body}</div>"
