"""The sections of joulegate's settings: one frozen dataclass per TOML table.

Each field's docstring is what the README's settings table says about it;
``__post_init__`` rejects bad values with a :class:`~config.errors.ConfigError`
that names the key (``meters.sample_hz``). A section's keys live in a TOML
table (``[carbon] provider``) and in the environment as
``JOULEGATE_<SECTION>_<KEY>`` (``JOULEGATE_CARBON_PROVIDER``). The top-level
:class:`~config.settings.Settings` holds one of each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from config.errors import ConfigError


def require(ok: bool, key: str, allowed: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``ok``; ``allowed`` says what it must be."""
    if not ok:
        raise ConfigError(f"setting {key!r}: must be {allowed}")


TASK_NAME_PATTERN = r"[a-z0-9_-]{1,40}"
"""What a task name (``x-joulegate-task``, ``telemetry.metric_tasks``) may be."""
OTEL_EXPORTERS = ("otlp", "console", "none")
"""Values ``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` may list."""
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
"""OTLP transports the Python SDK speaks (it has no ``http/json``); the first is the default."""
OTEL_SAMPLERS = (
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
)
"""Values ``OTEL_TRACES_SAMPLER`` may take; the first is the default."""


def _one_of(values: tuple[str, ...]) -> str:
    return "one of " + ", ".join(repr(v) for v in values)


def _number_in(text: str, low: float, high: float) -> bool:
    try:
        return low <= float(text) <= high
    except ValueError:
        return False


@dataclass(frozen=True)
class MeterSettings:
    """Power meters (``[meters]``)."""

    kinds: tuple[str, ...] = ("auto",)
    """Meters to use: ``auto`` (detect NVML, RAPL, configured external meters,
    else estimate) or a list of ``nvml``, ``rapl``, ``prometheus``, ``ipmi``,
    ``shelly``, ``tasmota``, ``estimate``."""
    sample_hz: float = 10.0
    """Rate of the background sampler for the local meters (1 to 100)."""
    external_hz: float = 2.0
    """Rate at which whole-machine meters (Prometheus, IPMI, smart plugs) are polled
    (0.1 to 100)."""
    gpu_indices: tuple[int, ...] = ()
    """NVML GPU indices to meter; empty means all."""
    rapl_root: str = "/sys/class/powercap"
    """Root of the powercap tree (RAPL)."""
    rapl_psys: bool = False
    """Also read the platform (psys) domain where present."""
    prometheus_url: str = ""
    """A Prometheus exporter's /metrics URL giving whole-machine power or energy."""
    prometheus_metric: str = "scaph_host_power_microwatts"
    """Metric name to read from ``prometheus_url``."""
    prometheus_labels: tuple[str, ...] = ()
    """Label matchers ``name=value`` the sample must carry."""
    prometheus_unit: Literal["W", "uW", "J", "uJ"] = "uW"
    """Unit of the metric: a gauge in W/uW or a counter in J/uJ."""
    prometheus_temperature_metric: str = ""
    """A temperature gauge (°C) on the same endpoint for the thermal guard (e.g.
    ``DCGM_FI_DEV_GPU_TEMP``, ``node_hwmon_temp_celsius``); read with the power."""
    ipmi: bool = False
    """Read whole-machine power from ``ipmitool dcmi power reading``."""
    ipmi_host: str = ""
    """The BMC to read over the network (``ipmitool -I lanplus -H``); empty reads this
    host's own BMC. A ``[[machines]]`` machine that is not ``local`` needs it."""
    ipmi_user: str = ""
    """User name on ``ipmi_host``."""
    ipmi_password: str = field(default="", repr=False)
    """Password on ``ipmi_host`` (passed to ``ipmitool`` in its environment, never logged)."""
    plug_url: str = ""
    """Base URL of a Shelly or Tasmota smart plug."""
    plug_kind: Literal["shelly", "tasmota"] = "shelly"
    """Which smart-plug API ``plug_url`` speaks."""
    proc_root: str = "/proc"
    """Where ``stat`` and ``cpuinfo`` are read for the estimate."""
    dmi_root: str = "/sys/class/dmi/id"
    """Where the estimate reads DMI names (``sys_vendor``, ``product_name``,
    ``bios_vendor``) to tell a virtual machine."""
    hwmon_root: str = "/sys/class/hwmon"
    """Where the thermal guard reads CPU temperatures."""
    cpu_tdp_w: float = 0.0
    """Estimate: TDP in watts of all the CPUs this machine sees; 0 looks the CPU up in
    the bundled table on bare metal, else (a VM or an unknown CPU) uses per-vCPU
    coefficients."""
    gpu_board_power_w: float = 0.0
    """Estimate: a GPU's board power in watts to add while a request runs."""
    thermal_limit_c: float = 0.0
    """Thermal guard: stop admitting requests above this GPU/CPU temperature (0 = off)."""
    thermal_resume_c: float = 0.0
    """Thermal guard: admit again once below this temperature."""

    def __post_init__(self) -> None:
        known = {"nvml", "rapl", "prometheus", "ipmi", "shelly", "tasmota", "estimate"}
        require(
            self.kinds == ("auto",) or (bool(self.kinds) and set(self.kinds) <= known),
            "meters.kinds",
            "auto, or a list of " + ", ".join(sorted(known)),
        )
        require(1.0 <= self.sample_hz <= 100.0, "meters.sample_hz", "between 1 and 100")
        require(0.1 <= self.external_hz <= 100.0, "meters.external_hz", "between 0.1 and 100")
        for item in self.prometheus_labels:
            name, sep, _ = item.partition("=")
            require(bool(sep and name.strip()), "meters.prometheus_labels", "name=value items")
        require(self.cpu_tdp_w >= 0, "meters.cpu_tdp_w", ">= 0")
        require(self.gpu_board_power_w >= 0, "meters.gpu_board_power_w", ">= 0")
        if self.thermal_limit_c:
            require(
                0 < self.thermal_resume_c < self.thermal_limit_c,
                "meters.thermal_resume_c",
                "above 0 and below meters.thermal_limit_c",
            )


@dataclass(frozen=True)
class CarbonSettings:
    """Carbon intensity and SCI (``[carbon]``)."""

    provider: Literal["static", "table", "electricitymaps", "uk"] = "table"
    """Where the grid's carbon intensity comes from: ``static`` (``intensity_g_per_kwh``),
    ``table`` (bundled yearly average for ``country``), ``electricitymaps`` (live, needs
    ``zone`` and ``api_key``) or ``uk`` (live, GB national grid, no key)."""
    intensity_g_per_kwh: float = 475.0
    """``static`` provider: the intensity in gCO2e/kWh (default: world average, IEA)."""
    country: str = ""
    """ISO country code (2 or 3 letters) for the ``table`` provider and for the fallback
    of live providers; empty uses the live provider's country (``uk``: GB,
    ``electricitymaps``: the zone's), else the world average."""
    zone: str = ""
    """Electricity Maps zone (e.g. ``DE``, ``US-CAL-CISO``)."""
    api_key: str = field(default="", repr=False)
    """Electricity Maps API key (never logged)."""
    electricitymaps_url: str = "https://api.electricitymap.org"
    """Electricity Maps API base URL."""
    uk_url: str = "https://api.carbonintensity.org.uk"
    """UK Carbon Intensity API base URL."""
    ttl_s: float = 900.0
    """How long a live value is used before it is fetched again."""
    stale_s: float = 3600.0
    """While fetches fail, how long past its TTL the last good live value is still used
    (marked ``stale``) before the table is used instead."""
    pue: float = 1.0
    """Power usage effectiveness: data-centre overhead applied to energy before CO2eq."""
    embodied_g: float = -1.0
    """SCI: embodied emissions of the hardware in gCO2e. Negative (the default): chosen
    at start-up from the hardware found: 164 kg per GPU NVML finds plus their share of
    a 5,700 kg 8-GPU server base (EcoLogits), a VM's vCPUs over 96 of a generic
    1,000 kg server, or a bare-metal server's 1,000 kg (SCI specification); 0 or more
    overrides the detection (each answer names the choice in ``embodied_model``)."""
    lifetime_s: float = 4 * 365.25 * 86400
    """SCI: expected hardware lifetime in seconds (default 4 years)."""
    resource_share: float = 1.0
    """SCI: share of the machine a request reserves (1 when serialised on a dedicated
    machine)."""

    def __post_init__(self) -> None:
        require(self.intensity_g_per_kwh >= 0, "carbon.intensity_g_per_kwh", ">= 0")
        require(
            self.country == "" or (len(self.country) in (2, 3) and self.country.isalpha()),
            "carbon.country",
            "an ISO country code of 2 or 3 letters (e.g. FR or FRA)",
        )
        if self.provider == "electricitymaps":
            require(bool(self.zone), "carbon.zone", "set for the electricitymaps provider")
            require(bool(self.api_key), "carbon.api_key", "set for the electricitymaps provider")
        for key, url in (
            ("carbon.electricitymaps_url", self.electricitymaps_url),
            ("carbon.uk_url", self.uk_url),
        ):
            require(url.startswith(("http://", "https://")), key, "an http:// or https:// URL")
        require(self.ttl_s > 0, "carbon.ttl_s", "> 0")
        require(self.stale_s >= 0, "carbon.stale_s", ">= 0")
        require(self.pue >= 1.0, "carbon.pue", ">= 1.0")
        require(self.lifetime_s > 0, "carbon.lifetime_s", "> 0")
        require(0 < self.resource_share <= 1, "carbon.resource_share", "in (0, 1]")


@dataclass(frozen=True)
class LedgerSettings:
    """The per-user ledger (``[ledger]``)."""

    path: str = ""
    """SQLite file; empty means ``joulegate/ledger.sqlite3`` in the user's data folder."""
    url: str = ""
    """``postgresql://user:password@host:port/db`` keeps the ledger in PostgreSQL instead
    of the SQLite ``path`` (``JOULEGATE_LEDGER_URL``)."""
    node_name: str = ""
    """This joulegate's name in the ledger's ``host`` column (``report --by host``, and
    how budgets tell this host's spending from the others' on a shared ledger); empty
    means the machine's hostname. Give every joulegate sharing a ledger its own name."""
    record_content: bool = False
    """Store prompt and response text in the ledger (off by default)."""
    synchronous: Literal["normal", "full"] = "normal"
    """SQLite ``synchronous`` in WAL mode: ``normal`` keeps every committed row through a
    crash or ``kill -9`` of joulegate; ``full`` also through a power cut, at the cost of
    an fsync per request."""
    busy_timeout_s: float = 1.0
    """How long a write waits for another process's lock before the row goes to the
    fallback buffer instead."""
    buffer_rows: int = 10_000
    """Rows kept in memory while the database cannot be written."""
    fallback_path: str = ""
    """Append-only JSON-lines file for rows the database could not take; empty means
    the ledger's path with ``.pending.jsonl`` appended."""
    retry_s: float = 2.0
    """How often buffered rows are retried while the database cannot be written."""
    require_durable: bool = True
    """Refuse new inference requests (503, code ``ledger_unavailable``) while neither the
    database nor the fallback file can take a row. On by default because the ledger is
    what bills users: a row held only in memory is lost if joulegate is killed, so
    serving such a request would give away energy no one is charged for. Turn off to
    keep serving (rows then wait in memory, up to ``buffer_rows``)."""

    def __post_init__(self) -> None:
        require(self.buffer_rows >= 1, "ledger.buffer_rows", ">= 1")
        require(self.busy_timeout_s >= 0, "ledger.busy_timeout_s", ">= 0")
        require(self.retry_s > 0, "ledger.retry_s", "> 0")


@dataclass(frozen=True)
class AuthSettings:
    """Who is calling (``[auth]``)."""

    mode: Literal["auto", "keys", "trust", "open"] = "auto"
    """``keys``: joulegate-issued API keys; ``trust``: user from the ``user`` body
    field or ``user_header``; ``open``: everyone is ``anonymous``; ``auto``:
    ``keys`` once any key has been created (revoked ones count), else ``open``."""
    user_header: str = "x-joulegate-user"
    """Header naming the user in ``trust`` mode (it wins over the body's ``user``)."""
    refresh_s: float = 2.0
    """How often keys and budgets changed by the CLI are picked up while serving, and
    how long a key prefix the ledger does not know is answered 401 without asking it
    again."""

    def __post_init__(self) -> None:
        require(bool(self.user_header), "auth.user_header", "a header name")
        require(self.refresh_s > 0, "auth.refresh_s", "> 0")


@dataclass(frozen=True)
class BudgetSettings:
    """How per-user budgets are enforced (``[budgets]``)."""

    preflight: bool = False
    """Also refuse (429 ``energy_budget_insufficient``) a request whose forecast energy,
    the high end of its 80% interval, exceeds what is left of its user's energy budget,
    before it queues. Off by default: a forecast can be wrong, and without it a request
    is refused only once the budget is used up."""
    refresh_s: float = 1.0
    """How often the spending other joulegates recorded in a shared ledger is re-read
    (this host's own requests count at once); the staleness of a budget check."""

    def __post_init__(self) -> None:
        require(self.refresh_s > 0, "budgets.refresh_s", "> 0")


@dataclass(frozen=True)
class TelemetrySettings:
    """OpenTelemetry and Prometheus (``[telemetry]``); exporters use ``OTEL_*``."""

    provider_name: str = "llama.cpp"
    """``gen_ai.provider.name`` on spans: ``ollama``, ``llama.cpp``, ``vllm``, …"""
    metrics_user_label: bool = True
    """Put the user on metric series, ``/metrics`` and OpenTelemetry alike (turn off to
    limit cardinality)."""
    metrics_public: bool = False
    """Serve ``/metrics`` without a key in ``keys`` auth mode (by default it asks for an
    admin key, ``Authorization: Bearer jg-…``: it names every user with their energy)."""
    metric_tasks: tuple[str, ...] = ()
    """Task names (``x-joulegate-task``) that get their own label on the Prometheus
    energy counters, besides the bundled ``code``, ``math``, ``questions``, ``sql`` and
    ``translation``; any other task is counted as ``other``."""
    otel_env: tuple[tuple[str, str], ...] = field(
        default=(), repr=False, metadata={"env": "OTEL_*"}
    )
    """The ``OTEL_*`` environment variables, captured at start-up (set those, not this)."""

    def __post_init__(self) -> None:
        require(bool(self.provider_name), "telemetry.provider_name", "a provider name")
        for task in self.metric_tasks:
            require(
                re.fullmatch(TASK_NAME_PATTERN, task) is not None,
                "telemetry.metric_tasks",
                "task names of 1 to 40 of a-z, 0-9, '_' and '-'",
            )
        for key in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"):
            names = {n.strip() for n in (self.otel(key) or "").split(",") if n.strip()}
            require(names <= set(OTEL_EXPORTERS), key, _one_of(OTEL_EXPORTERS))
        for key in (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ):
            protocol = self.otel(key) or OTLP_PROTOCOLS[0]
            require(protocol in OTLP_PROTOCOLS, key, _one_of(OTLP_PROTOCOLS))
        sampler = self.otel("OTEL_TRACES_SAMPLER") or OTEL_SAMPLERS[0]
        require(sampler in OTEL_SAMPLERS, "OTEL_TRACES_SAMPLER", _one_of(OTEL_SAMPLERS))
        for key, low, high in (
            ("OTEL_TRACES_SAMPLER_ARG", 0.0, 1.0),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", 1.0, 3_600_000.0),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 1.0, 3_600_000.0),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", 1.0, 3_600_000.0),
            ("OTEL_METRIC_EXPORT_INTERVAL", 1.0, 86_400_000.0),
            ("OTEL_METRIC_EXPORT_TIMEOUT", 1.0, 3_600_000.0),
        ):
            value = self.otel(key)
            if value is not None:
                require(_number_in(value, low, high), key, f"a number from {low:g} to {high:g}")

    def otel(self, name: str) -> str | None:
        """The value of one ``OTEL_*`` variable; unset and empty are both None."""
        value = dict(self.otel_env).get(name, "").strip()
        return value or None


@dataclass(frozen=True)
class BackendSettings:
    """One model server on this machine (a ``[[backends]]`` table).

    Every backend listed here runs on the machine joulegate meters: they share its
    one gate and its meters, because they share its power. (A later ``[[machines]]``
    table, another host with its own meters and gate, will hold backends of its
    own; ``[[backends]]`` keeps meaning "on this machine".)
    """

    url: str = ""
    """Base URL of the OpenAI-compatible server (without ``/v1``)."""
    models: tuple[str, ...] = ()
    """Models it serves; empty means ask its ``GET /v1/models`` (at start-up and
    every ``backend_refresh_s``)."""
    name: str = ""
    """Name in the ledger, reports, spans and metrics; empty means ``host:port``."""

    def __post_init__(self) -> None:
        require(
            self.url.startswith(("http://", "https://")),
            "backends.url",
            "an http:// or https:// URL",
        )

    @property
    def label(self) -> str:
        """The backend's name, or ``host:port`` of its URL."""
        if self.name:
            return self.name
        rest = self.url.split("://", 1)[-1]
        return rest.split("/", 1)[0]
