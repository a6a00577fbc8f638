"""``POST /v1/energy/forecast``: what a request would cost, without running it.

The body is the one ``chat/completions`` or ``completions`` takes (``messages``
or ``prompt``, ``model``, ``max_tokens``), plus an optional ``task`` (or the
``x-joulegate-task`` header, which wins). It authenticates like the other energy
routes. The prompt's tokens are counted as ``joulegate forecast`` counts them
(:func:`accounting.prompt_size.count_prompt`): by the backend's own tokenizer where
it has one (llama.cpp's ``/tokenize``, with a short timeout), else approximated from
its characters in the tokens that model's backend reports; ``prompt_tokens_source``
says which (``backend_tokenizer`` or ``approximation``). A model with a small
history whose newest rows the fit lacks is refitted first
(:meth:`~accounting.forecast_stage.Forecaster.freshen`), so the last request a
bench sent is in the forecast. The answer gives the predicted output tokens, energy (total
and dynamic), duration, CO2e and SCI, each as a median and an 80% interval, the
``basis`` of the token prediction and the fit behind it (see
:mod:`accounting.forecast.fit`). A requested alias uses the fit of the name it was
served under (learnt from the ledger at start-up and from each request since).

CO2e uses the intensity the carbon stage uses now; without a carbon stage, the
world average (``carbon_source`` says which).
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, post
from litestar.di import NamedDependency

from accounting.carbon import WORLD_AVERAGE_G_PER_KWH, Intensity, IntensitySource, sci
from accounting.carbon.embodied import Embodied, embodied_for
from accounting.forecast.calibration import PromptTokensSource, count_prompt
from accounting.forecast.fit import Interval, Prediction
from accounting.forecast.stage import Forecaster, max_tokens_of
from accounting.ledger.routes import _caller
from config import CarbonSettings
from config.errors import BackendUnreachable, BadRequest, ModelNotFound, NotFound
from proxy.context import AppContext
from proxy.intake import parse_body
from proxy.task import is_task_name, request_task

INTERVAL = 0.8
"""The share of requests each forecast interval should hold (p10 to p90)."""


def _interval(value: Interval | None, digits: int = 6) -> dict[str, float] | None:
    if value is None:
        return None
    return {"p50": round(value.p50, digits), "low": round(value.low, digits),
            "high": round(value.high, digits)}  # fmt: skip


def _body_of(raw: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], str, str | None]:
    """The parsed body, its model and its task; 400 as the proxied routes give it."""
    body = parse_body(raw, "/v1/energy/forecast") or {}
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model")
    if not isinstance(body.get("messages"), list) and body.get("prompt") is None:
        raise BadRequest(
            "give messages (as for chat/completions) or prompt (as for completions)",
            param="messages",
        )
    cap = body.get("max_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise BadRequest("max_tokens must be an integer of at least 1", param="max_tokens")
    task = request_task(headers, body)
    if task is None and "task" in body:
        task = body["task"]
        if not isinstance(task, str) or not is_task_name(task):
            raise BadRequest(
                f"task: {task!r} is not a task name (1 to 40 of a-z, 0-9, '_' and '-')",
                param="task",
                code="invalid_task",
            )
    return body, model, task


@post("/v1/energy/forecast", media_type=MediaType.JSON, status_code=200)
async def energy_forecast(
    request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]
) -> dict[str, Any]:
    """The forecast for a chat or completions body, answered without calling the model."""
    await _caller(request, ctx)
    forecaster = ctx.get(Forecaster)
    if forecaster is None:
        raise NotFound("forecasts are not enabled on this joulegate", code="not_found")
    headers = {k.lower(): v for k, v in request.headers.items()}
    body, model, task = _body_of(await request.body(), headers)
    known = ctx.router.models
    if known and model not in known:
        raise ModelNotFound(
            f"The model `{model}` does not exist on this joulegate. Models: "
            + ", ".join(sorted(known)),
            code="model_not_found",
            param="model",
        )
    prompt_tokens, source = await _prompt_tokens(ctx, forecaster, model, body)
    await forecaster.freshen(forecaster.fitted_name(model))
    prediction = forecaster.predict(model, task, body, prompt_tokens)
    return {
        "object": "energy.forecast",
        "model": model,
        "task": task,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_source": source,
        "max_tokens": max_tokens_of(body),
        "interval": INTERVAL,
        **render(prediction, ctx.settings.carbon, _intensity(ctx), ctx.get(Embodied)),
    }


async def _prompt_tokens(
    ctx: AppContext, forecaster: Forecaster, model: str, body: dict[str, Any]
) -> tuple[int, PromptTokensSource]:
    """The prompt's tokens for ``model``, counted as the command line counts them; a
    tokenizer's count also teaches ``forecaster`` how that backend sizes prompts."""
    try:
        backend = ctx.router.route(model)
    except (ModelNotFound, BackendUnreachable):
        backend = None
    name = forecaster.fitted_name(model)
    return await count_prompt(ctx.client, backend, name, body, forecaster.prompt_size)


def _intensity(ctx: AppContext) -> Intensity:
    """The carbon stage's intensity now; the world average without a carbon stage."""
    source = ctx.get(IntensitySource)  # type: ignore[type-abstract]  # fixed or live: either
    if source is None:
        return Intensity(WORLD_AVERAGE_G_PER_KWH, "table:world-average")
    return source.current()


def render(
    prediction: Prediction,
    cfg: CarbonSettings,
    reading: Intensity,
    hardware: Embodied | None = None,
) -> dict[str, Any]:
    """A prediction's figures, with CO2e and SCI at ``reading`` (PUE from ``cfg``, the
    embodied emissions the carbon stage chose, else ``carbon.embodied_g`` or a generic
    server, as the carbon stage applies them)."""
    if hardware is None:
        hardware = embodied_for(None, cfg.embodied_g if cfg.embodied_g >= 0 else None)
    total_embodied_g = hardware.total_g
    intensity, where = reading.g_per_kwh, reading.source
    co2e = sci_g = None
    e, d = prediction.energy_j, prediction.duration_s
    if e is not None:
        per_j = cfg.pue * intensity / sci.J_PER_KWH
        co2e = e.scaled(per_j)
        if d is not None:

            def embodied(s: float) -> float:
                return sci.embodied_g(total_embodied_g, s, cfg.lifetime_s, cfg.resource_share)

            sci_g = Interval(
                co2e.p50 + embodied(d.p50), co2e.low + embodied(d.low), co2e.high + embodied(d.high)
            )
    out: dict[str, Any] = {
        "basis": prediction.basis,
        "history_cap": prediction.history_cap,
        "completion_tokens": _interval(prediction.completion_tokens, 1),
        "energy_j": _interval(prediction.energy_j),
        "energy_dynamic_j": _interval(prediction.energy_dynamic_j),
        "duration_s": _interval(prediction.duration_s),
        "co2e_g": _interval(co2e, 9),
        "sci_g": _interval(sci_g, 9),
        "carbon_intensity_g_per_kwh": intensity,
        "carbon_source": where,
        "pue": cfg.pue,
        "embodied_model": hardware.model,
        "fit": None if prediction.fit is None else prediction.fit.describe(),
    }
    if prediction.reason is not None:
        out["reason"] = prediction.reason
    return out


def route_handlers() -> list[Any]:
    """The forecast's Litestar handlers, for ``default_route_handlers``."""
    return [energy_forecast]
