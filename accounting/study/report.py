"""The study's report: one self-contained HTML file, beside the plot files.

In the order a reader needs it: the conclusion (a paragraph and a table per task),
the warnings, the tables (energy measured or estimated, the estimate's range, dynamic
energy, the SCI split, operational CO2e, tokens, duration, requests per cell), the
plots (their SVG inlined, so the file stands alone), the methods, and last the
settings as given.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accounting.study.findings import Findings
from accounting.study.summary import Summary

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#111}table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #bbb;
padding:0.25em 0.6em;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#eee}code,pre{background:#f4f4f4}figure{margin:1em 0}
.conclusion{font-size:1.05em;line-height:1.5}
.warning{border-left:6px solid #000;background:#f2f2f2;padding:0.4em 0.8em;margin:0.4em 0}
.warning b{text-transform:uppercase}li{margin:0.2em 0}"""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _plots(plots: Sequence[Path]) -> list[str]:
    if not plots:
        return [
            "<p>No plots: install matplotlib (<code>pip install 'joulegate[study]'"
            "</code>) and run <code>joulegate bench --resume</code>.</p>"
        ]
    parts = []
    for svg in plots:
        text = svg.read_text(encoding="utf-8")
        start = text.find("<svg")
        parts.append(
            f"<figure>{text[start:]}<figcaption>{svg.stem} "
            f"(<a href='{svg.stem}.png'>PNG</a>, <a href='{svg.name}'>SVG</a>)"
            "</figcaption></figure>"
        )
    return parts


def write_report(
    path: Path,
    summary: Summary,
    findings: Findings,
    methods: Sequence[str],
    settings: dict[str, Any],
    plots: Sequence[Path],
    footer: Sequence[str] = (),
) -> None:
    """Write ``report.html``."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>joulegate bench</title><style>{_STYLE}</style></head><body>",
        "<h1>joulegate bench: which model is most efficient for which task</h1>",
        "<h2>Conclusion</h2>",
        f"<p class='conclusion'>{html.escape(findings.paragraph)}</p>",
    ]
    head, rows = findings.table()
    if rows:
        parts.append(_table(head, rows))
    parts.extend(
        f"<p class='warning'><b>Warning:</b> {html.escape(w)}</p>" for w in findings.warnings
    )
    parts.append(
        f"<h2>Tables</h2><p>Energy figures are <b>{html.escape(summary.estimated)}</b>; "
        "cells are the mean ± the half-width of its 95% interval.</p>"
    )
    for head, rows in summary.tables():
        parts.append(f"<h3>{html.escape(head[0])}</h3>")
        parts.append(_table(head, rows))
    parts.append("<h2>Plots</h2>")
    parts.extend(_plots(plots))
    parts.append("<h2>Methods</h2><ul>")
    parts.extend(f"<li>{html.escape(line)}</li>" for line in methods)
    parts.append("</ul>")
    parts.extend(f"<p>{html.escape(line)}</p>" for line in footer)
    parts.append(
        "<details><summary>Settings as given</summary>"
        f"<pre>{html.escape(json.dumps(settings, indent=2))}</pre></details>"
    )
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
