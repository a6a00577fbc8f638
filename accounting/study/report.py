"""The study's report: one self-contained HTML file with the settings, the tables and
the plots (their SVG inlined, so the file stands alone), beside the plot files."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accounting.study.summary import METRICS, Summary

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:0.25em 0.6em;text-align:right}td:first-child,th:first-child{text-align:left}
code,pre{background:#f4f4f4}figure{margin:1em 0}"""


def write_report(
    path: Path,
    summary: Summary,
    settings: dict[str, Any],
    plots: Sequence[Path],
    footer: Sequence[str] = (),
) -> None:
    """Write ``report.html``."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>joulegate bench</title><style>{_STYLE}</style></head><body>",
        "<h1>joulegate bench: energy per model and task</h1>",
        f"<p>{html.escape(summary.header)}</p>",
        "<h2>Settings</h2>",
        f"<pre>{html.escape(json.dumps(settings, indent=2))}</pre>",
    ]
    for m in METRICS:
        head, rows = summary.grid(m)
        parts.append(f"<h2>{html.escape(m.title)} ({html.escape(m.unit)})</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    if not plots:
        parts.append(
            "<p>No plots: install matplotlib (<code>pip install 'joulegate[study]'"
            "</code>) and run <code>joulegate bench --resume</code>.</p>"
        )
    for svg in plots:
        text = svg.read_text(encoding="utf-8")
        start = text.find("<svg")
        parts.append(
            f"<figure>{text[start:]}<figcaption>{svg.stem} "
            f"(<a href='{svg.stem}.png'>PNG</a>, <a href='{svg.name}'>SVG</a>)"
            "</figcaption></figure>"
        )
    parts.extend(f"<p>{html.escape(line)}</p>" for line in footer)
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
