"""A request in OpenTelemetry's terms: GenAI attributes and joulegate's own namespace.

Pure functions from an :class:`~proxy.exchange.Exchange` to attribute
dictionaries and metric labels, shared by the OpenTelemetry stage
(:mod:`proxy.observability.telemetry`) and the Prometheus one
(:mod:`proxy.observability.metrics`). A value that is not known is left out,
never sent as zero.

Span attributes carry what the client sent; metric labels never do unchecked.
Every metric series is kept in memory until the process ends, so a label
value a client chooses (a model name, a user name in ``trust`` mode) would let
it grow joulegate's memory and ``/metrics`` without bound. Labels therefore
come from bounded sets: a model the backends serve (:func:`model_label`), a
user the ledger knows (:func:`user_label`), a metered endpoint
(:func:`endpoint_label`), an HTTP status (:func:`status_label`), a bundled or
configured task (:func:`task_label`); anything else is :data:`OTHER`.
"""

from __future__ import annotations

from collections.abc import Container

from opentelemetry.util.types import AttributeValue

from proxy.exchange import Exchange
from proxy.figures import figures_of

ENERGY_ATTRIBUTES = (
    "joulegate.request_id",
    "joulegate.backend",
    "joulegate.machine",
    "joulegate.task",
    "joulegate.energy.low_j",
    "joulegate.energy.high_j",
    "joulegate.queue_ms",
    "joulegate.thermal_wait_ms",
    "joulegate.duration_ms",
    "joulegate.energy.total_j",
    "joulegate.energy.dynamic_j",
    "joulegate.energy.<component>_j",
    "joulegate.energy.meter",
    "joulegate.energy.estimated",
    "joulegate.energy.attribution",
    "joulegate.energy.concurrency_mean",
    "joulegate.energy.window_j",
    "joulegate.power.avg_w",
    "joulegate.co2e_g",
    "joulegate.carbon.intensity_g_per_kwh",
    "joulegate.carbon.source",
    "joulegate.sci_g",
    "joulegate.sci_operational_g",
    "joulegate.sci_embodied_g",
    "joulegate.sci_g_per_token",
)
"""joulegate's span attributes; ``<component>`` is ``gpu``, ``cpu``, ``dram``, ``psys``
or ``machine``. Each is set only where the figure is known."""

HW_TYPES = {
    "gpu": "gpu",
    "cpu": "cpu",
    "dram": "memory",
    "psys": "enclosure",
    "machine": "enclosure",
}
"""The meters' components as the hardware conventions' ``hw.type``."""

# GenAI operation names by endpoint (``/v1/...`` and Ollama's ``/api/...``).
_OPERATIONS = {
    "chat/completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
    "chat": "chat",
    "generate": "text_completion",
    "embed": "embeddings",
}
# Request parameters recorded as ``gen_ai.request.*`` (body key -> attribute).
_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}


def operation_name(ex: Exchange) -> str | None:
    """``gen_ai.operation.name``; None for paths that are not inference (``/v1/models``)."""
    return _OPERATIONS.get(ex.endpoint, ex.endpoint) if ex.gated else None


def request_attributes(ex: Exchange, provider_name: str) -> dict[str, AttributeValue]:
    """What is known of an inference request before it is forwarded."""
    attrs: dict[str, AttributeValue] = {
        "gen_ai.provider.name": provider_name,
        "gen_ai.request.stream": ex.stream,
    }
    operation = operation_name(ex)
    if operation is not None:
        attrs["gen_ai.operation.name"] = operation
    if ex.model_requested:
        attrs["gen_ai.request.model"] = ex.model_requested
    body = ex.body or {}
    for key, attr in _REQUEST_PARAMS.items():
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[attr] = value
    choices = body.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and choices != 1:
        attrs["gen_ai.request.choice.count"] = choices
    return attrs


def outcome_attributes(ex: Exchange) -> dict[str, AttributeValue]:
    """Who asked and what the backend answered (token usage apart: :func:`usage_attributes`)."""
    attrs: dict[str, AttributeValue] = {"enduser.id": ex.user}
    if ex.model_served:
        attrs["gen_ai.response.model"] = ex.model_served
    if ex.response_id:
        attrs["gen_ai.response.id"] = ex.response_id
    if ex.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = tuple(ex.finish_reasons)
    return attrs


def usage_attributes(ex: Exchange) -> dict[str, AttributeValue]:
    """``gen_ai.usage.*``: for the inference (CLIENT) span only, as the GenAI conventions
    place them, so a backend that sums spans counts each token once."""
    attrs: dict[str, AttributeValue] = {}
    if ex.prompt_tokens is not None:
        attrs["gen_ai.usage.input_tokens"] = ex.prompt_tokens
    if ex.completion_tokens is not None:
        attrs["gen_ai.usage.output_tokens"] = ex.completion_tokens
    return attrs


def http_route(ex: Exchange) -> str:
    """``http.route``: a bounded template of the path. Metered paths are a fixed set
    (plus ``gated_paths``) and stand for themselves; ``/v1/models`` and
    ``/v1/models/{model}`` are OpenAI's; any other path is its mount's ``/v1/*`` or
    ``/api/*``, since a client can send any path there."""
    if ex.gated:
        return ex.path
    mount, _, rest = ex.path.lstrip("/").partition("/")
    if rest == "models":
        return f"/{mount}/models"
    if rest.startswith("models/"):
        return f"/{mount}/models/{{model}}"
    return f"/{mount}/*"


_SPANS = {
    r: tuple((f.attr, f.span, "{}" in f.span) for f in figures_of(r) if f.span is not None)
    for r in ("measurement", "carbon", "forecast")
}


def energy_attributes(ex: Exchange) -> dict[str, AttributeValue]:
    """joulegate's figures (:data:`ENERGY_ATTRIBUTES`) that the stages measured, named
    as :data:`proxy.figures.FIGURES` says."""
    w = ex.window
    attrs: dict[str, AttributeValue | None] = {
        "joulegate.request_id": ex.request_id,
        "joulegate.backend": ex.backend,
        "joulegate.machine": ex.machine,
        "joulegate.task": ex.task,
        "joulegate.queue_ms": w.queue_s * 1000.0,
        "joulegate.thermal_wait_ms": w.thermal_wait_s * 1000.0,
        "joulegate.duration_ms": None if w.duration_s is None else w.duration_s * 1000.0,
    }
    for record, spans in _SPANS.items():
        figures = getattr(ex, record)
        if figures is None:
            continue
        for attr, name, by_component in spans:
            value = getattr(figures, attr)
            if by_component:  # ``{}`` in the name stands for the component
                for c, v in value.items():
                    attrs[name.format(c)] = v
            else:
                attrs[name] = value
    if ex.energy_j is not None and w.duration_s:
        attrs["joulegate.power.avg_w"] = ex.energy_j / w.duration_s
    return {k: v for k, v in attrs.items() if v is not None}


def error_type(ex: Exchange, *, server_side: bool) -> str | None:
    """``error.type``: joulegate's failure reason, else an HTTP error status.

    A server span fails on 5xx only (a 4xx is the caller's mistake); the backend
    span fails on any status from 400, as HTTP client spans do.
    """
    if ex.failure is not None:
        return ex.failure
    if ex.status is not None and ex.status >= (500 if server_side else 400):
        return str(ex.status)
    return None


OTHER = "other"
"""The metric label of every value outside its bounded set."""


def model_label(ex: Exchange, models: Container[str]) -> str:
    """The model a request is counted under: served, else requested, whichever is one
    of ``models`` (those the backends serve); :data:`OTHER` when neither is, ``unknown``
    when the request named none."""
    named = False
    for model in (ex.model_served, ex.model_requested):
        if model:
            if model in models:
                return model
            named = True
    return OTHER if named else "unknown"


def bounded(value: str, known: Container[str]) -> str:
    """``value`` when it is in ``known``, else :data:`OTHER` (for metric attributes)."""
    return value if value in known else OTHER


def user_label(ex: Exchange) -> str:
    """The user a request is counted under: one the ledger knows (a key or a budget),
    ``anonymous``, else :data:`OTHER` (a name a ``trust``-mode caller made up)."""
    return ex.user if ex.user_known or ex.user == "anonymous" else OTHER


def task_label(ex: Exchange, tasks: Container[str]) -> str:
    """The task a request is counted under: one of ``tasks`` (the bundled task names
    plus ``telemetry.metric_tasks``), :data:`OTHER` for any other name a client tagged,
    ``none`` when it tagged none."""
    if ex.task is None:
        return "none"
    return bounded(ex.task, tasks)


def endpoint_label(ex: Exchange) -> str:
    """A metered path (a fixed set plus ``gated_paths``) or ``models``; other paths can
    be anything a client sends, so they share :data:`OTHER`."""
    return ex.endpoint if ex.gated or ex.endpoint == "models" else OTHER


def status_label(ex: Exchange) -> str:
    """The final HTTP status (``499``: the client left); ``0`` when there is none."""
    return str(ex.status) if ex.status is not None and 100 <= ex.status <= 599 else "0"


def energy_split(ex: Exchange) -> list[tuple[str, float, float | None]]:
    """``(component, energy_j, co2e_g)`` to count: ``total`` first, then each measured
    component, with the request's CO2eq shared in proportion to energy."""
    if ex.energy_j is None or ex.energy_j < 0:
        return []
    co2e = ex.co2e_g if ex.co2e_g is not None and ex.co2e_g >= 0 else None
    out: list[tuple[str, float, float | None]] = [("total", ex.energy_j, co2e)]
    for component, energy_j in ex.energy_by_component_j.items():
        if energy_j is None or energy_j < 0:
            continue
        share = co2e * energy_j / ex.energy_j if co2e is not None and ex.energy_j > 0 else None
        out.append((component, energy_j, share))
    return out
