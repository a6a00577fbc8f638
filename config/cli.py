"""What every ``joulegate`` sub-command shares: the options and reading the settings.

Each package defines its own sub-commands (``register(subparsers)``) with these
helpers; the entry point that lists them all is ``proxy/cli.py``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from config.loader import load_settings
from config.settings import Settings


def add_config_option(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """``--config FILE``: the TOML settings file."""
    p.add_argument(
        "--config", type=Path, help=help_text or "TOML settings file (default: ./joulegate.toml)"
    )


def add_ledger_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--config`` and ``--ledger PATH``, for the commands that work on the ledger."""
    add_config_option(p)
    p.add_argument("--ledger", metavar="PATH", help="ledger file (default: ledger.path)")
    return p


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from ``--config``, the environment and the given overrides (None = unset)."""
    return load_settings(
        getattr(args, "config", None),
        os.environ,
        {k: str(v) for k, v in overrides.items() if v is not None},
    )
