"""``joulegate forecast``: what a request would cost, and how good the forecasts are.

``joulegate forecast --model M [--task T] (--prompt TEXT | --file F) [--max-tokens N]``
fits the ledger and forecasts one request, as ``POST /v1/energy/forecast`` does
(CO2e at the intensity ``[carbon]`` gives without a live fetch: ``static``, or
the bundled table's). ``joulegate forecast --evaluate`` fits on the first 70% of
the ledger's completed rows by time and scores the rest per model and task: R²
of the energy fit given the actual tokens, and the MAPE of the forecast made
before the fact (from the recorded prompt tokens and ``max_tokens``). Bad input
is one line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from accounting.carbon import build_source
from accounting.forecast.fit import (
    SAMPLE_COLUMNS,
    SAMPLE_SQL,
    SAMPLE_WHERE,
    Sample,
    evaluate,
    fit_samples,
    sample_from_sql,
)
from accounting.forecast.routes import render
from accounting.forecast.stage import approx_prompt_tokens
from accounting.ledger.choose import ledger_from_settings
from config.cli import add_ledger_options, settings_from
from config.errors import ConfigError
from config.table import render_table
from proxy.task import is_task_name

TRAIN_SHARE = 0.7


def _forecast(args: argparse.Namespace) -> int:
    if args.evaluate:
        if args.model or args.prompt is not None or args.file:
            raise ConfigError("forecast --evaluate takes no --model, --prompt or --file")
        return _evaluate(args)
    if not args.model:
        raise ConfigError("forecast: give --model (or --evaluate)")
    if (args.prompt is None) == (args.file is None):
        raise ConfigError("forecast: give --prompt TEXT or --file F, one of them")
    if args.task is not None and not is_task_name(args.task):
        raise ConfigError(f"--task: {args.task!r} is not a task name (1 to 40 of a-z, 0-9, _, -)")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ConfigError("--max-tokens must be at least 1")
    text = args.prompt
    if args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--file: cannot read {args.file}: {exc}") from None
    settings = settings_from(args, **{"ledger.path": args.ledger})
    body = {"messages": [{"role": "user", "content": text}]}
    prompt_tokens = approx_prompt_tokens(body)

    async def main() -> list[Any]:
        ledger = ledger_from_settings(settings.ledger)
        await ledger.open(must_exist=True)
        try:
            return await ledger.fetchall(SAMPLE_SQL)
        finally:
            await ledger.close()

    fs = fit_samples(sample_from_sql(r) for r in asyncio.run(main()))
    prediction = fs.predict(args.model, args.task, prompt_tokens, args.max_tokens)
    reading = build_source(settings.carbon).current()
    out = {
        "model": args.model,
        "task": args.task,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_source": "approximation",
        "max_tokens": args.max_tokens,
        **render(prediction, settings.carbon, reading),
    }
    if args.format == "json":
        print(json.dumps(out, indent=2))
        return 0
    print(_describe(out), end="")
    return 0


def _describe(out: dict[str, Any]) -> str:
    fit = out["fit"]
    lines = [f"{out['model']}, task {out['task'] or '(any)'}: {out['basis']}"]
    if fit is not None:
        lines.append(f"fit on {fit['rows']} {fit['energy']} rows, R² {fit['r2']:.3f}, "
                     f"fitted {fit['fitted_at'][:19]} UTC")  # fmt: skip
    lines.append(f"prompt ~{out['prompt_tokens']} tokens (characters / 4)")
    if out.get("reason"):
        lines.append(f"no forecast: {out['reason']}")
        return "\n".join(lines) + "\n"
    lines += ["", f"{'':18}{'p50':>12}  80% interval"]
    for name in ("completion_tokens", "energy_j", "energy_dynamic_j", "duration_s", "co2e_g",
                 "sci_g"):  # fmt: skip
        v = out[name]
        if v is not None:
            lines.append(f"{name:18}{v['p50']:>12.4g}  {v['low']:.4g} to {v['high']:.4g}")
    lines.append(f"\nCO2e at {out['carbon_intensity_g_per_kwh']} g/kWh ({out['carbon_source']})"
                 f", PUE {out['pue']}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _evaluate(args: argparse.Namespace) -> int:
    settings = settings_from(args, **{"ledger.path": args.ledger})

    async def main() -> list[Any]:
        ledger = ledger_from_settings(settings.ledger)
        await ledger.open(must_exist=True)
        try:
            return await ledger.fetchall(
                f"SELECT {SAMPLE_COLUMNS}, request_params FROM requests"  # noqa: S608
                f" WHERE {SAMPLE_WHERE} ORDER BY ts, id"
            )
        finally:
            await ledger.close()

    rows = asyncio.run(main())
    items: list[tuple[Sample, int | None]] = []
    for r in rows:
        params = json.loads(r[8]) if r[8] else {}
        cap = params.get("max_tokens") or params.get("max_completion_tokens")
        items.append((sample_from_sql(r), cap if isinstance(cap, int) and cap > 0 else None))
    cut = int(len(items) * TRAIN_SHARE)
    if cut < 1 or cut >= len(items):
        raise ConfigError(f"forecast --evaluate: {len(items)} completed rows are too few to split")
    fs = fit_samples(s for s, _ in items[:cut])
    results = evaluate(fs, items[cut:])
    if args.format == "json":
        groups = [dataclasses.asdict(r) for r in results]
        print(json.dumps({"train_rows": cut, "test_rows": len(items) - cut, "groups": groups},
                         indent=2))  # fmt: skip
        return 0
    print(f"fit on the first {cut} completed rows by time, scored on the last {len(items) - cut}")
    head = ["model", "task", "test_rows", "r2_actual_tokens", "mape_pct", "forecast_rows"]
    rows = [
        [r.model, r.task, str(r.test_rows), _opt(r.r2_actual_tokens, ".3f"),
         _opt(r.mape_pct, ".1f"), str(r.forecast_rows)]
        for r in results
    ]  # fmt: skip
    print(render_table(head, rows, right_align=False), end="")
    return 0


def _opt(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def register(sub: Any) -> None:
    """Add ``forecast`` to the ``joulegate`` command."""
    p = add_ledger_options(
        sub.add_parser("forecast", help="what a request will cost, from the ledger's history")
    )
    p.add_argument("--model", help="the model the request would go to")
    p.add_argument("--task", help="what the request is for (its x-joulegate-task)")
    p.add_argument("--prompt", metavar="TEXT", help="the prompt")
    p.add_argument("--file", metavar="F", help="read the prompt from this file")
    p.add_argument("--max-tokens", type=int, metavar="N", help="the request's output cap")
    p.add_argument(
        "--evaluate", action="store_true",
        help="fit on the first 70%% of the ledger by time and score the forecasts on the rest",
    )  # fmt: skip
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_forecast)
