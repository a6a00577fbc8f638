"""`make bench`: run every benchmark and print its table."""

from __future__ import annotations

import asyncio
import importlib
import sys

MODULES = [
    "bench.overhead",
    "bench.memory",
    "bench.meters",
    "bench.ledger",
    "bench.ledger_pg",
    "bench.fleet",
    "bench.forecast",
    "bench.attribution",
    "bench.batching",
    "bench.scale",
    "bench.console",
    "bench.daysums",
    "bench.machines",
    "bench.stalled_readers",
]


def main() -> None:
    """Run the named benchmarks (default: all that exist); flags such as ``--quick``
    are left in ``sys.argv`` for the benchmarks that take them."""
    names = [f"bench.{a}" for a in sys.argv[1:] if not a.startswith("-")] or MODULES
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"(skipping {name}: not present)")
                continue
            raise
        asyncio.run(module.main())


if __name__ == "__main__":
    main()
