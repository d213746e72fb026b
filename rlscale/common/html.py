"""HTML pieces every report of the project shares: the page style, tables, figures, numbers.

The evaluation report (``experiments/report.py``), the promotion report and the shadow-mode
report (``serving/shadow_report.py``) are self-contained HTML files: plots are PNGs embedded as
``data:`` URIs (matplotlib's Agg canvas, no display), and every piece of text from input is
escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .6rem 0; }
th, td { border: 1px solid #ddd; padding: .3rem .55rem; text-align: right; }
thead th { background: #f3f3f3; }
tbody th { text-align: left; background: #fafafa; white-space: nowrap; }
td.miss { color: #a33; }
th.best { background: #fff3c4; }
.ci { color: #888; font-size: .8em; }
.note { color: #555; font-size: .9rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
"""


def png_data_uri(fig: Figure) -> str:
    """``fig`` as a PNG ``data:`` URI, so a report is one self-contained file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # attaches an Agg canvas; no GUI backend is ever touched
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def format_number(value: float, fmt: str) -> str:
    """``value`` with ``fmt`` (a format string, or ``pct``); ``n/a`` when missing or not finite."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if fmt == "pct":
        return f"{100.0 * value:.2f}%"
    return fmt.format(value)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of escaped ``header`` cells over ``rows`` of ready ``<td>`` cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figure(section_id: str, title: str, uri: str, caption: str) -> str:
    """A titled section with one image and its caption."""
    return (
        f'<section id="{section_id}"><h2>{html.escape(title)}</h2><figure>'
        f'<img src="{uri}" alt="{html.escape(title)}">'
        f"<figcaption class='note'>{html.escape(caption)}</figcaption></figure></section>"
    )
