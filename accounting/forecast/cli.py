"""``joulegate forecast``: what a request would cost, and how good the forecasts are.

``joulegate forecast --model M [--task T] (--prompt TEXT | --file F) [--max-tokens N]``
fits the ledger and forecasts one request, as ``POST /v1/energy/forecast`` does
(CO2e at the intensity ``[carbon]`` gives without a live fetch: ``static``, or
the bundled table's). The prompt is sized by the same
:func:`~accounting.prompt_size.count_prompt` as the endpoint's: the configured
backend's tokenizer when it answers, else the approximation calibrated on the
ledger's rows. ``joulegate forecast --evaluate`` fits on the first 70% of each
model's completed rows by time and scores the rest per model and task
(:mod:`accounting.forecast_eval`): R² of the energy fit given the actual tokens,
and the MAPE of the forecast made before the fact (from the recorded prompt tokens
and ``max_tokens``), with a warning for a cell with too few test rows. Bad input
is one line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from accounting.carbon import build_source
from accounting.carbon.embodied import embodied_for
from accounting.forecast.calibration import (
    CALIBRATION_ROWS,
    CALIBRATION_SQL,
    PromptTokensSource,
    calibration_from_rows,
    count_prompt,
)
from accounting.forecast.evaluate import Item, evaluate, split_by_model
from accounting.forecast.fit import (
    SAMPLE_COLUMNS,
    SAMPLE_SQL,
    SAMPLE_WHERE,
    fit_samples,
    sample_from_sql,
)
from accounting.forecast.routes import render
from accounting.ledger.choose import ledger_from_settings
from config import Settings
from config.cli import add_ledger_options, settings_from
from config.errors import BackendUnreachable, ConfigError, ModelNotFound
from config.table import render_table
from meters.host import detect_host
from proxy.backends import BackendRouter
from proxy.task import is_task_name


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
    rows, prompt_tokens, source = asyncio.run(_read(settings, args.model, body))
    fs = fit_samples(sample_from_sql(r) for r in rows)
    prediction = fs.predict(args.model, args.task, prompt_tokens, args.max_tokens)
    reading = build_source(settings.carbon).current()
    # The hardware the carbon stage would find here (the CLI runs where joulegate does):
    # without it, SCI's embodied part was a generic server's, not this machine's.
    override_g = settings.carbon.embodied_g if settings.carbon.embodied_g >= 0 else None
    hardware = embodied_for(detect_host(settings.meters), override_g)
    out = {
        "model": args.model,
        "task": args.task,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_source": source,
        "max_tokens": args.max_tokens,
        **render(prediction, settings.carbon, reading, hardware),
    }
    if args.format == "json":
        print(json.dumps(out, indent=2))
        return 0
    print(_describe(out), end="")
    return 0


async def _read(
    settings: Settings, model: str, body: dict[str, Any]
) -> tuple[list[Any], int, PromptTokensSource]:
    """The ledger's completed rows, and the prompt's tokens as the endpoint counts them."""
    ledger = ledger_from_settings(settings.ledger)
    await ledger.open(must_exist=True)
    try:
        rows = await ledger.fetchall(SAMPLE_SQL)
        calibration = calibration_from_rows(
            await ledger.fetchall(CALIBRATION_SQL, [CALIBRATION_ROWS])
        )
    finally:
        await ledger.close()
    async with httpx.AsyncClient() as client:
        router = BackendRouter(settings.backend_list, client)
        await router.refresh()
        try:
            backend = router.route(model)
        except (ModelNotFound, BackendUnreachable):
            backend = None
        tokens, source = await count_prompt(client, backend, model, body, calibration)
    return rows, tokens, source


def _describe(out: dict[str, Any]) -> str:
    fit = out["fit"]
    lines = [f"{out['model']}, task {out['task'] or '(any)'}: {out['basis']}"]
    if fit is not None:
        lines.append(f"fit on {fit['rows']} {fit['energy']} rows, R² {fit['r2']:.3f}, "
                     f"fitted {fit['fitted_at'][:19]} UTC")  # fmt: skip
    how = {"backend_tokenizer": "the backend's tokenizer"}.get(
        out["prompt_tokens_source"], "approximated, calibrated on the ledger"
    )
    lines.append(f"prompt {out['prompt_tokens']} tokens ({how})")
    if out.get("history_cap") is not None:
        lines.append(f"answers that hit max_tokens {out['history_cap']:g} are taken to run "
                     f"to {out['max_tokens']}")  # fmt: skip
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
    items: list[Item] = []
    for r in rows:
        params = json.loads(r[9]) if r[9] else {}
        cap = params.get("max_tokens") or params.get("max_completion_tokens")
        items.append((sample_from_sql(r), cap if isinstance(cap, int) and cap > 0 else None))
    train, test = split_by_model(items)
    if not train or not test:
        raise ConfigError(f"forecast --evaluate: {len(items)} completed rows are too few to split")
    fs = fit_samples(s for s, _ in train)
    results = evaluate(fs, test)
    for r in results:
        if r.warning:
            print(f"joulegate forecast: warning: {r.model} / {r.task}: {r.warning}",
                  file=sys.stderr)  # fmt: skip
    if args.format == "json":
        groups = [dataclasses.asdict(r) for r in results]
        print(json.dumps({"train_rows": len(train), "test_rows": len(test), "groups": groups},
                         indent=2))  # fmt: skip
        return 0
    print(f"fit on the first 70% of each model's completed rows by time ({len(train)}), "
          f"scored on the rest ({len(test)})")  # fmt: skip
    head = ["model", "task", "test_rows", "r2_actual_tokens", "mape_pct", "forecast_rows"]
    table = [
        [r.model, r.task, str(r.test_rows), _opt(r.r2_actual_tokens, ".3f"),
         _opt(r.mape_pct, ".1f") + ("*" if r.warning else ""), str(r.forecast_rows)]
        for r in results
    ]  # fmt: skip
    print(render_table(head, table, right_align=False), end="")
    if any(r.warning for r in results):
        print("* too few test rows to trust (see the warnings)")
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
        help="fit on the first 70%% of each model's rows by time; score the forecasts on the rest",
    )  # fmt: skip
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(handler=_forecast)
