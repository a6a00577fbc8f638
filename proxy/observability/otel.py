"""OpenTelemetry tracer and meter providers, built from the ``OTEL_*`` settings.

The standard variables reach this module through ``settings.telemetry`` (only
``config/`` reads the environment), and every exporter is built from them
explicitly:

``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``
    ``otlp``, ``console`` or ``none`` (a comma-separated list is allowed). Unset
    means ``otlp`` when an OTLP endpoint is configured and ``none`` otherwise, so
    joulegate exports and prints nothing unless told to.
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``, ``..._METRICS_ENDPOINT``)
    The collector: a base URL (``/v1/traces`` and ``/v1/metrics`` are appended
    for HTTP) or, for the per-signal variables, the full URL.
``OTEL_EXPORTER_OTLP_PROTOCOL`` (or per signal)
    ``http/protobuf`` (default) or ``grpc``.
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT`` (or per signal)
    Headers as ``key=value,...`` and the export timeout in milliseconds.
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``
    The resource; the service name defaults to ``joulegate``.
``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``
    Head sampling (default ``parentbased_always_on``).
``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_METRIC_EXPORT_TIMEOUT``
    The periodic metric reader, in milliseconds.

Spans leave through a :class:`BatchSpanProcessor` and metrics through a
:class:`PeriodicExportingMetricReader`, both on their own threads: exporting
never delays a request, and a collector that cannot be reached only costs a
logged warning. No provider is installed globally, so several apps (tests) can
live in one process.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.util.re import parse_env_headers

from config import OTLP_PROTOCOLS, TelemetrySettings

log = logging.getLogger("joulegate.telemetry")

DEFAULT_SERVICE_NAME = "joulegate"
_DEFAULT_ENDPOINT = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
_DEFAULT_TIMEOUT_MS = 10_000.0
_DEFAULT_INTERVAL_MS = 60_000.0
_DEFAULT_EXPORT_TIMEOUT_MS = 30_000.0


@dataclass(frozen=True)
class Providers:
    """The app's own tracer and meter providers; shut them down in the lifespan exit."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporting: tuple[str, ...]
    """What is exported, e.g. ``("traces: otlp http/protobuf http://c:4318/v1/traces",)``."""
    traces: bool = True
    """Whether any span goes anywhere (an exporter or a test's)."""
    metrics: bool = True
    """Whether any metric reader reads the OTel metrics."""

    def shutdown(self) -> None:
        """Flush and stop both providers (blocks up to the export timeout: use a thread)."""
        try:
            self.tracer_provider.shutdown()
        finally:
            self.meter_provider.shutdown()


def build_providers(
    settings: TelemetrySettings,
    *,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Providers:
    """Providers with the exporters ``settings`` asks for plus any given (tests)."""
    resource = build_resource(settings)
    exporting: list[str] = []
    tracer_provider = TracerProvider(
        sampler=build_sampler(settings), resource=resource, shutdown_on_exit=False
    )
    traces = bool(span_exporters)
    for exporter, what in _span_exporters(settings):
        exporting.append(f"traces: {what}")
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        traces = True
    for exporter in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    readers = list(metric_readers)
    interval_ms = _ms(settings, "OTEL_METRIC_EXPORT_INTERVAL", _DEFAULT_INTERVAL_MS)
    timeout_ms = _ms(settings, "OTEL_METRIC_EXPORT_TIMEOUT", _DEFAULT_EXPORT_TIMEOUT_MS)
    for metric_exporter, what in _metric_exporters(settings):
        exporting.append(f"metrics: {what}")
        readers.append(
            PeriodicExportingMetricReader(
                metric_exporter,
                export_interval_millis=interval_ms,
                export_timeout_millis=timeout_ms,
            )
        )
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, shutdown_on_exit=False
    )
    return Providers(tracer_provider, meter_provider, tuple(exporting), traces, bool(readers))


def build_resource(settings: TelemetrySettings) -> Resource:
    """``service.name`` (``OTEL_SERVICE_NAME``, default joulegate), ``OTEL_RESOURCE_ATTRIBUTES``."""
    attributes: dict[str, str] = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        SERVICE_VERSION: _joulegate_version(),
    }
    for item in (settings.otel("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
    attributes[SERVICE_NAME] = (
        settings.otel("OTEL_SERVICE_NAME") or attributes.get(SERVICE_NAME) or DEFAULT_SERVICE_NAME
    )
    return Resource(attributes)


def build_sampler(settings: TelemetrySettings) -> Sampler:
    """The head sampler ``OTEL_TRACES_SAMPLER`` names (validated by the settings)."""
    name = settings.otel("OTEL_TRACES_SAMPLER") or "parentbased_always_on"
    ratio = float(settings.otel("OTEL_TRACES_SAMPLER_ARG") or 1.0)
    root: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
    }[name.removeprefix("parentbased_")]
    return ParentBased(root) if name.startswith("parentbased_") else root


def _exporter_names(settings: TelemetrySettings, signal: str) -> list[str]:
    named = settings.otel(f"OTEL_{signal.upper()}_EXPORTER")
    if named is None:
        configured = settings.otel("OTEL_EXPORTER_OTLP_ENDPOINT") or settings.otel(
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        )
        return ["otlp"] if configured else []
    names = [n.strip() for n in named.split(",") if n.strip()]
    return [] if "none" in names else names


def _otlp_target(
    settings: TelemetrySettings, signal: str
) -> tuple[str, str, dict[str, str], float]:
    """Protocol, endpoint, headers and timeout (s) of one signal's OTLP exporter."""
    sig = signal.upper()
    protocol = (
        settings.otel(f"OTEL_EXPORTER_OTLP_{sig}_PROTOCOL")
        or settings.otel("OTEL_EXPORTER_OTLP_PROTOCOL")
        or OTLP_PROTOCOLS[0]
    )
    endpoint = settings.otel(f"OTEL_EXPORTER_OTLP_{sig}_ENDPOINT")
    if endpoint is None:
        base = settings.otel("OTEL_EXPORTER_OTLP_ENDPOINT") or _DEFAULT_ENDPOINT[protocol]
        endpoint = base if protocol == "grpc" else f"{base.rstrip('/')}/v1/{signal}"
    headers = dict(
        parse_env_headers(
            settings.otel(f"OTEL_EXPORTER_OTLP_{sig}_HEADERS")
            or settings.otel("OTEL_EXPORTER_OTLP_HEADERS")
            or "",
            liberal=True,
        )
    )
    timeout_ms = _ms(settings, f"OTEL_EXPORTER_OTLP_{sig}_TIMEOUT", 0.0) or _ms(
        settings, "OTEL_EXPORTER_OTLP_TIMEOUT", _DEFAULT_TIMEOUT_MS
    )
    return protocol, endpoint, headers, timeout_ms / 1000.0


def _otlp_exporter(settings: TelemetrySettings, signal: str) -> tuple[Any, str]:
    """The OTLP exporter for ``signal`` (``traces`` or ``metrics``) and a log label.

    Exporter modules are imported only when configured: the gRPC one pulls in grpcio.
    """
    protocol, endpoint, headers, timeout_s = _otlp_target(settings, signal)
    kind = "trace_exporter" if signal == "traces" else "metric_exporter"
    cls_name = "OTLPSpanExporter" if signal == "traces" else "OTLPMetricExporter"
    if protocol == "grpc":
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.grpc.{kind}")
        exporter = getattr(module, cls_name)(
            endpoint=endpoint,
            insecure=endpoint.startswith("http://"),
            headers=headers,
            timeout=timeout_s,
        )
    else:
        module = importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{kind}")
        exporter = getattr(module, cls_name)(endpoint=endpoint, headers=headers, timeout=timeout_s)
    return exporter, f"otlp {protocol} {_shown(endpoint)}"


def _span_exporters(settings: TelemetrySettings) -> list[tuple[SpanExporter, str]]:
    out: list[tuple[SpanExporter, str]] = []
    for name in _exporter_names(settings, "traces"):
        if name == "console":
            out.append((ConsoleSpanExporter(out=sys.stdout), "console"))
        else:
            out.append(_otlp_exporter(settings, "traces"))
    return out


def _metric_exporters(settings: TelemetrySettings) -> list[tuple[MetricExporter, str]]:
    out: list[tuple[MetricExporter, str]] = []
    for name in _exporter_names(settings, "metrics"):
        if name == "console":
            out.append((ConsoleMetricExporter(out=sys.stdout), "console"))
        else:
            out.append(_otlp_exporter(settings, "metrics"))
    return out


def _shown(url: str) -> str:
    """``url`` fit for a log line: without any ``user:password@``."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _ms(settings: TelemetrySettings, name: str, default: float) -> float:
    value = settings.otel(name)
    return float(value) if value is not None else default


def _joulegate_version() -> str:
    try:
        return importlib.metadata.version("joulegate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
