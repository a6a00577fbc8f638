"""Observability: OpenTelemetry spans and metrics, Prometheus, the access log.

A capability like the meters and the ledger: it codes against the contract
(:mod:`proxy.context`, :mod:`proxy.exchange`) and the composition root
(:mod:`proxy.app`) wires its components in. The forwarding code imports nothing
from here. ``semconv`` maps an exchange onto the GenAI semantic conventions and is
shared by the spans, the OTel metrics and Prometheus.
"""

from proxy.observability.accesslog import LogFormat, access_log_component, log_handler
from proxy.observability.metrics import metrics_endpoint, prometheus_component
from proxy.observability.telemetry import telemetry_component

__all__ = [
    "LogFormat",
    "access_log_component",
    "log_handler",
    "metrics_endpoint",
    "prometheus_component",
    "telemetry_component",
]
