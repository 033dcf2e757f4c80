"""Building blocks of tunesmith's HTML reports: one static page, images embedded, no scripts.

A report must open offline, from an e-mail attachment or an archived run folder, so every image
is inlined as a base64 `data:` URI and the style sheet is in the page. Everything shown is
escaped; nothing is fetched.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       max-width: 1040px; margin: 2rem auto; padding: 0 1.2rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
     border-bottom: 1px solid #d8dce4; padding-bottom: .3rem; }
.sub { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e3e6ec; padding: .28rem .7rem; text-align: left; vertical-align: top; }
th { background: #f4f6f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #12733a; } .down { color: #b3261e; }
.warn { background: #fff4e0; border-left: 4px solid #e69f00; padding: .6rem .9rem; }
.ok { background: #eef7f0; border-left: 4px solid #009e73; padding: .6rem .9rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 0 1.2rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eceef2; }
figcaption { color: #5b6475; font-size: 13px; }
nav a { margin-right: .8rem; } pre { background: #f4f6f9; padding: .8rem; overflow-x: auto; font-size: 12px; }
.text { max-width: 560px; } img.thumb { max-width: 96px; max-height: 96px; }
"""


def as_yaml(value: Any) -> str:
    """A config value as the user writes it in YAML (`false`, `null`), not as Python prints it (`False`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """A whole page: `sections` are (anchor id, heading, inner html), linked from a top menu."""
    menu = " ".join(f'<a href="#{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, _ in sections)
    body = "\n".join(f'<section id="{esc(anchor)}">\n<h2>{esc(heading)}</h2>\n{inner}\n</section>'
                     for anchor, heading, inner in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n<p class=\"sub\">{esc(subtitle)}</p>\n"
            f"<nav>{menu}</nav>\n{body}\n</body>\n</html>\n")


def table(headers: list[str], rows: list[list[Any]], numeric_from: int = 1) -> str:
    """A table; cells from column `numeric_from` on are right-aligned. Cells given as `Raw` are
    inserted as they are (already html), everything else is escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = ' class="num"' if i >= numeric_from else ""
            cells.append(f"<td{css}>{cell.html if isinstance(cell, Raw) else esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = f"<tr>{head}</tr>\n" if any(headers) else ""
    return f"<table>\n{header}" + "\n".join(body) + "\n</table>"


class Raw:
    """A table cell that is already html (an image, a coloured number)."""

    def __init__(self, html_text: str):
        self.html = html_text


def image(path: Path, alt: str, caption: str = "") -> str:
    """A PNG file inlined as a `data:` URI, with a caption."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    note = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{note}</figure>'


def thumbnail(path: str, size: int = 96) -> str | None:
    """A small JPEG of an image file as an `<img>`, or None when the file is not a readable image."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            picture = opened.convert("RGB")
            picture.thumbnail((size, size))
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="thumb" src="data:image/jpeg;base64,{data}" alt="{esc(Path(path).name)}">'


def signed(value: float, greater_is_better: bool = True) -> Raw:
    """A change like +0.1234, green when it is an improvement, red when not."""
    good = value > 0 if greater_is_better else value < 0
    css = "up" if good else "down" if value != 0 else ""
    return Raw(f'<span class="{css}">{value:+.4f}</span>')
