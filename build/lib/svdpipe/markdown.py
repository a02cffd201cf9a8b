"""Pictures inside Markdown metadata: Dagster's UI renders data URIs, so a plot or a GIF needs no file server."""

from __future__ import annotations

import base64

__all__ = ["inline_image"]


def inline_image(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f"![{alt}](data:{mime};base64,{base64.b64encode(data).decode()})"
