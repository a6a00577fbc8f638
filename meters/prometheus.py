"""Whole-machine power or energy from any Prometheus exporter's text endpoint.

A smart PDU's exporter, an IPMI exporter or Scaphandre
(``scaph_host_power_microwatts``) all serve the text exposition format; the
metric name, the label matchers and the unit are configured. A gauge in W or
µW is integrated by the sampler; a counter in J or µJ is used as it is (a
counter reset, e.g. an exporter restart, is bridged). Matching samples are
summed, so a PDU's outlets or a server's PSUs can be added up with one name.

Only the wanted series are parsed (:func:`samples`): the page is searched for lines
that start with their names, and the rest of it (node_exporter's thousands of
lines) is never split, at up to ``external_hz`` reads a second per machine.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Sequence
from typing import Literal

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


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\}|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def samples(page: bytes, names: Collection[str]) -> Iterator[tuple[str, dict[str, str], float]]:
    """``(name, labels, value)`` of every sample of ``names`` in an exposition page;
    ValueError for a sample line that is not the text format."""
    for name in names:
        key = name.encode()
        start = 0
        while (at := page.find(key, start)) >= 0:
            start = at + len(key)
            if at and page[at - 1] != 0x0A:  # not at a line's start: a comment, a longer name
                continue
            end = page.find(b"\n", start)
            rest = page[start : end if end >= 0 else len(page)].decode("utf-8", "replace")
            if rest[:1] == "{":
                labels, rest = _labels(rest)
            elif rest[:1] in (" ", "\t"):
                labels = {}
            else:  # a longer name that starts with this one
                continue
            value = rest.split(None, 1)
            if not value:
                raise ValueError(f"{name} has no value")
            yield name, labels, float(value[0])


def _labels(text: str) -> tuple[dict[str, str], str]:
    """The labels of ``{a="1",b="2"} 3.0`` and what follows them."""
    labels: dict[str, str] = {}
    pos = 1
    while text[pos : pos + 1] != "}":
        match = _LABEL.match(text, pos)
        if match is None:
            raise ValueError(f"bad labels in {text!r}")
        value = re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), match.group(2))
        labels[match.group(1)] = value
        pos = match.end() if match.group(3) == "," else match.start(3)
    return labels, text[pos + 1 :]


class PrometheusMeter(Meter, http.Polled):
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

    def _value(self, page: bytes) -> float:
        total: float | None = None
        temperatures: dict[str, float] = {}
        try:
            if self._temperature_names:
                for name, labels, value in samples(page, self._temperature_names):
                    where = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
                    temperatures[where or name] = value
            matchers = self._matchers.items()
            for _, labels, value in samples(page, self._names):
                if not matchers or all(labels.get(k) == v for k, v in matchers):
                    total = (total or 0.0) + value
        except ValueError as exc:
            raise MeterError(f"{self._url}: not Prometheus text format ({exc})") from exc
        self._temperatures_c = temperatures
        if total is None:
            wanted = self._metric + (f"{self._matchers}" if self._matchers else "")
            raise MeterError(f"{self._url} has no sample of {wanted}")
        return total * self._scale

    def read(self) -> dict[str, Reading]:
        """Power in W (gauge) or a running energy total in J (counter)."""
        return self._reading(self._value(http.get_body(self._client, self._url)))

    def poll_url(self) -> str | None:
        """The endpoint, when it is plain HTTP (see :class:`~meters.http.Polled`)."""
        return http.pollable(self._client, self._url)

    def poll_answer(self, status: int, body: bytes) -> dict[str, Reading]:
        """The reading in the endpoint's answer (see :class:`~meters.http.Polled`)."""
        return self._reading(self._value(http.checked(self._url, status, body)))

    def _reading(self, value: float) -> dict[str, Reading]:
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
