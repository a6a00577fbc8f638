"""The one plain-text table every command prints (reports, keys, users, forecasts,
the bench grids): columns padded to their widest cell, numbers right-aligned."""

from __future__ import annotations

from collections.abc import Sequence


def render_table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    footer: Sequence[str] | None = None,
    rules: bool = False,
    right_align: bool = True,
    empty: str = "(none)",
) -> str:
    """``head`` and ``rows`` (and a ``footer`` line such as a total) as aligned text.

    The first column is left-aligned; the others are right-aligned when
    ``right_align`` (figures), else left-aligned (names). ``rules`` draws a line of
    dashes under the head (and above the footer). Without rows, ``empty`` stands in.
    """
    every = [head, *rows, *([footer] if footer is not None else [])]
    widths = [max(len(r[i]) for r in every) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 or not right_align else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(head)]
    if rules:
        out.append(rule)
    out += [line(r) for r in rows] or [empty]
    if footer is not None:
        if rules:
            out.append(rule)
        out.append(line(footer))
    return "\n".join(out) + "\n"
