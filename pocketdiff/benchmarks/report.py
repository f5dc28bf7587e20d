"""HTML pages: one self-contained file, images embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table_html(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_page(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """``sections``: (heading, inner HTML). Written atomically."""
    from pocketdiff.pipedir import atomic_output_file

    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{image-rendering:pixelated}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections]
    parts.append("</body></html>")
    path = Path(path)
    with atomic_output_file(path) as tmp:
        tmp.write_text("".join(parts), encoding="utf-8")
    return path
