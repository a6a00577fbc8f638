"""``python -m config [--write docs/reference/settings.md]``: print the settings table,
or refresh it in a Markdown page between its ``settings:begin``/``settings:end`` markers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from config.loader import settings_table


def table() -> str:
    """Every setting with its environment variable, default and meaning (Markdown)."""
    lines = ["| environment variable | TOML key | default | meaning |", "|---|---|---|---|"]
    for env, key, default, doc in settings_table():
        lines.append(f"| `{env}` | `{key}` | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Print the table, or write it into the page named after ``--write``."""
    if argv[:1] == ["--write"]:
        path = Path(argv[1])
        text = path.read_text(encoding="utf-8")
        new = re.sub(
            r"(<!-- settings:begin -->\n).*?(<!-- settings:end -->)",
            lambda m: m.group(1) + table() + "\n" + m.group(2),
            text,
            flags=re.S,
        )
        path.write_text(new, encoding="utf-8")
    else:
        print(table())


if __name__ == "__main__":
    main(sys.argv[1:])
