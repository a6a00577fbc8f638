"""``OTEL_*`` configuration: captured by the loader, validated, turned into exporters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import ConfigError, TelemetrySettings, load_settings
from proxy.observability.otel import Providers, build_providers, build_resource


def telemetry(**otel: str) -> TelemetrySettings:
    return TelemetrySettings(otel_env=tuple(sorted(otel.items())))


@pytest.fixture
def built() -> Iterator[list[Providers]]:
    """Providers a test builds, shut down after it."""
    made: list[Providers] = []
    yield made
    for providers in made:
        providers.shutdown()


def test_loader_captures_otel_variables_under_their_own_names() -> None:
    settings = load_settings(
        None,
        {
            "OTEL_SERVICE_NAME": "gate-7",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "JOULEGATE_TELEMETRY_PROVIDER_NAME": "vllm",
            "JOULEGATE_TELEMETRY_METRICS_USER_LABEL": "false",
            "HOME": "/root",
        },
    )
    t = settings.telemetry
    assert t.otel_env == (
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SERVICE_NAME", "gate-7"),
    )
    assert (t.provider_name, t.metrics_user_label) == ("vllm", False)
    assert t.otel("OTEL_SERVICE_NAME") == "gate-7"
    assert t.otel("OTEL_TRACES_EXPORTER") is None


def test_otel_headers_stay_out_of_the_settings_repr() -> None:
    settings = telemetry(OTEL_EXPORTER_OTLP_HEADERS="api-key=s3cret")
    assert settings.otel("OTEL_EXPORTER_OTLP_HEADERS") == "api-key=s3cret"  # still kept
    assert "s3cret" not in repr(settings)
    loaded = load_settings(None, {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret"})
    assert loaded.telemetry.otel("OTEL_EXPORTER_OTLP_HEADERS") == "api-key=s3cret"
    assert "s3cret" not in repr(loaded)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_METRICS_EXPORTER", "otlp,prometheus"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ],
)
def test_bad_otel_values_stop_start_up_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}'"):
        load_settings(None, {name: value})


def test_empty_otel_values_count_as_unset() -> None:
    settings = telemetry(OTEL_EXPORTER_OTLP_PROTOCOL="", OTEL_TRACES_EXPORTER=" ")
    assert settings.otel("OTEL_EXPORTER_OTLP_PROTOCOL") is None


@pytest.mark.parametrize(
    ("otel", "exporting"),
    [
        ({}, ()),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
            (
                "traces: otlp http/protobuf http://c:4318/v1/traces",
                "metrics: otlp http/protobuf http://c:4318/v1/metrics",
            ),
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
            ("metrics: otlp http/protobuf http://c:4318/v1/metrics",),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            ("traces: otlp grpc http://c:4317",),
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9/custom/path"},
            ("traces: otlp http/protobuf http://t:9/custom/path",),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "https://me:token@c:4318",
                "OTEL_METRICS_EXPORTER": "none",
            },
            ("traces: otlp http/protobuf https://c:4318/v1/traces",),  # no credentials in logs
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp"},
            ("traces: otlp http/protobuf http://localhost:4318/v1/traces",),
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"},
            ("traces: console",),
        ),
    ],
)
def test_exporters_follow_the_standard_variables(
    built: list[Providers], otel: dict[str, str], exporting: tuple[str, ...]
) -> None:
    providers = build_providers(telemetry(**otel))
    built.append(providers)
    assert providers.exporting == exporting


def test_the_resource_names_the_service() -> None:
    assert build_resource(telemetry()).attributes["service.name"] == "joulegate"
    resource = build_resource(
        telemetry(OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod,host.name=gpu%201")
    )
    assert resource.attributes["deployment.environment"] == "prod"
    assert resource.attributes["host.name"] == "gpu 1"
    assert resource.attributes["service.name"] == "joulegate"
    assert resource.attributes["telemetry.sdk.language"] == "python"
    named = telemetry(OTEL_RESOURCE_ATTRIBUTES="service.name=a", OTEL_SERVICE_NAME="b")
    assert build_resource(named).attributes["service.name"] == "b"
    only_attributes = telemetry(OTEL_RESOURCE_ATTRIBUTES="service.name=a")
    assert build_resource(only_attributes).attributes["service.name"] == "a"
