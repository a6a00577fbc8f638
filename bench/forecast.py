"""Benchmark of the forecast: a refit over a big ledger and one forecast.

1. Refit over a generated ledger of 1,000,000 rows (``bench.ledger``'s generator):
   the read and the robust fit, off the event loop (target: at most 5 s).
2. ``POST /v1/energy/forecast`` through joulegate in front of the fake backend,
   p50 and p99 (target p50: at most 2 ms), and the forecast each admitted request
   gets (arithmetic only), in microseconds.

Run with ``python -m bench.forecast [--rows N]`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from accounting import SqliteLedger
from accounting.forecast.stage import Forecaster
from bench.fake import MODELS as FAKE_MODELS
from bench.ledger import MODELS, generate_sqlite, percentile_ms, print_results
from bench.serve import spawn, spawn_process

BODY = {"model": MODELS[0], "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 64}  # fmt: skip


async def run(rows: int, calls: int) -> list[tuple[str, str, str]]:
    """Measure; Markdown table rows (what, figure, note)."""
    out: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.sqlite3"
        async with SqliteLedger(big):
            pass
        generate_sqlite(big, rows)
        async with SqliteLedger(big) as ledger:
            forecaster = Forecaster(ledger, max_rows=rows)
            t0, cpu0 = time.perf_counter(), time.process_time()
            fit = await forecaster.refit()
            refit_s = time.perf_counter() - t0
            # CPU time too: on a shared machine the wall clock also counts the others.
            refit_cpu_s = time.process_time() - cpu0
            t0 = time.perf_counter()
            for _ in range(10_000):
                forecaster.predict(MODELS[0], None, BODY)
            admission_us = (time.perf_counter() - t0) / 10_000 * 1e6
        out.append((f"refit over {rows:,} ledger rows (read + robust fit, in a thread)",
                    f"{refit_s:.2f} s", f"target <= 5 s; {refit_cpu_s:.2f} s of CPU;"
                    f" {fit.rows:,} rows used"))  # fmt: skip
        out.append(("forecast at admission (arithmetic only)", f"{admission_us:.1f} us",
                    "per request"))  # fmt: skip

        # joulegate as it is deployed (its own process, every default stage, the forecast
        # fitted on the big ledger at start-up), in front of bench's fake backend.
        env = {"JOULEGATE_PORT": "PORT", "JOULEGATE_LEDGER_PATH": str(big),
               "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}  # fmt: skip
        with spawn("bench.serve", "fake", "PORT") as backend_url:
            env["JOULEGATE_BACKEND_URL"] = backend_url
            with spawn_process(("proxy.cli", "serve"), env) as (url, _):
                served = dict(BODY, model=FAKE_MODELS[0])  # a model the backend lists
                samples = []
                async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                    for _ in range(50):
                        await c.post("/v1/energy/forecast", json=served)
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        r = await c.post("/v1/energy/forecast", json=served)
                        samples.append(time.perf_counter() - t0)
                        r.raise_for_status()
        p50, p99 = percentile_ms(samples, 0.5), percentile_ms(samples, 0.99)
        out.append(("POST /v1/energy/forecast, client to answer", f"p50 {p50:.2f} ms, p99 "
                    f"{p99:.2f} ms", f"target p50 <= 2 ms; {calls} calls"))  # fmt: skip
    return out


async def main(rows: int = 1_000_000, calls: int = 1000) -> None:
    """Run the forecast benchmark and print a Markdown table."""
    results = await run(rows, calls)
    print_results("Forecast: refit over a big ledger, and one forecast (2 cores shared)", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.rows))
