"""Whole-machine power or energy from any Prometheus exporter's text endpoint.

A smart PDU's exporter, an IPMI exporter or Scaphandre
(``scaph_host_power_microwatts``) all serve the text exposition format; the
metric name, the label matchers and the unit are configured. A gauge in W or
µW is integrated by the sampler; a counter in J or µJ is used as it is (a
counter reset, e.g. an exporter restart, is bridged). Matching samples are
summed, so a PDU's outlets or a server's PSUs can be added up with one name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from config.errors import MeterError
from meters import http
from meters.base import Meter, Reading

Unit = Literal["W", "uW", "J", "uJ"]
_SCALE: dict[str, float] = {"W": 1.0, "uW": 1e-6, "J": 1.0, "uJ": 1e-6}


def parse_matchers(labels: Sequence[str]) -> dict[str, str]:
    """``["psu=1", "host=a"]`` → ``{"psu": "1", "host": "a"}``."""
    out: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label matcher {item!r} is not name=value")
        out[key.strip()] = value.strip().strip('"')
    return out


class PrometheusMeter(Meter):
    """One metric of a Prometheus endpoint as the ``machine`` component."""

    name = "prometheus"
    remote = True

    def __init__(
        self,
        url: str,
        metric: str,
        *,
        labels: Sequence[str] = (),
        unit: Unit = "uW",
        client: http.Client | None = None,
        temperature_metric: str = "",
    ) -> None:
        self._url = url
        self._metric = metric
        self._names = {metric, metric + "_total"}
        self._matchers = parse_matchers(labels)
        self._scale = _SCALE[unit]
        self._counter = unit in ("J", "uJ")
        self._unit = unit
        self._client = client or http.new_client()
        self._last_raw: float | None = None
        self._total_j = 0.0
        self._temperature_names = {temperature_metric} if temperature_metric else set()
        self._temperatures_c: dict[str, float] = {}
        self._probe()

    @property
    def components(self) -> tuple[str, ...]:
        """Only ``machine``."""
        return ("machine",)

    def _value(self) -> float:
        text = http.get_text(self._client, self._url)
        total: float | None = None
        temperatures: dict[str, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in self._temperature_names:
                        where = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                        temperatures[where or sample.name] = float(sample.value)
                    elif sample.name in self._names and all(
                        sample.labels.get(k) == v for k, v in self._matchers.items()
                    ):
                        total = (total or 0.0) + float(sample.value)
        except ValueError as exc:
            raise MeterError(f"{self._url}: not Prometheus text format ({exc})") from exc
        self._temperatures_c = temperatures
        if total is None:
            wanted = self._metric + (f"{self._matchers}" if self._matchers else "")
            raise MeterError(f"{self._url} has no sample of {wanted}")
        return total * self._scale

    def read(self) -> dict[str, Reading]:
        """Power in W (gauge) or a running energy total in J (counter)."""
        value = self._value()
        if not self._counter:
            return {"machine": Reading(power_w=value)}
        if self._last_raw is not None:
            self._total_j += value - self._last_raw if value >= self._last_raw else value
        self._last_raw = value
        return {"machine": Reading(energy_j=self._total_j)}

    def temperatures_c(self) -> dict[str, float]:
        """The temperature gauge's samples at the last read (``temperature_metric``),
        by their labels: no request of its own, so it never blocks."""
        return dict(self._temperatures_c)

    def describe(self) -> str:
        """E.g. ``prometheus: machine from scaph_host_power_microwatts (uW gauge) at URL``."""
        kind = "counter" if self._counter else "gauge"
        return f"prometheus: machine from {self._metric} ({self._unit} {kind}) at {self._url}"

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
