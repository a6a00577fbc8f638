"""Whole-machine power from a smart plug over HTTP: Shelly and Tasmota.

``shelly``   Gen2/Gen3 devices answer ``GET /rpc/Switch.GetStatus?id=0`` with
             ``apower`` (W); Gen1 devices answer ``GET /status`` with
             ``meters[0].power`` (W). The generation is found on the first read.
``tasmota``  ``GET /cm?cmnd=Status%208`` answers ``StatusSNS.ENERGY.Power``
             (W; a list on multi-channel plugs, which is summed).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from config.errors import MeterError
from meters import http
from meters.base import Meter, Reading

SHELLY_GEN2_PATH = "/rpc/Switch.GetStatus?id=0"
SHELLY_GEN1_PATH = "/status"
TASMOTA_PATH = "/cm?cmnd=Status%208"


def _number(value: Any, where: str) -> float:
    if isinstance(value, list):
        return sum(_number(v, where) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise MeterError(f"{where} is not a number: {value!r}")


def shelly_gen2_power_w(body: Any) -> float:
    """``apower`` of a Gen2 ``Switch.GetStatus`` answer."""
    if not isinstance(body, dict) or "apower" not in body:
        raise MeterError("Shelly Switch.GetStatus answer has no apower")
    return _number(body["apower"], "apower")


def shelly_gen1_power_w(body: Any) -> float:
    """``meters[0].power`` of a Gen1 ``/status`` answer."""
    try:
        return _number(body["meters"][0]["power"], "meters[0].power")
    except (KeyError, IndexError, TypeError) as exc:
        raise MeterError("Shelly /status answer has no meters[0].power") from exc


def tasmota_power_w(body: Any) -> float:
    """``StatusSNS.ENERGY.Power`` of a Tasmota ``Status 8`` answer."""
    try:
        return _number(body["StatusSNS"]["ENERGY"]["Power"], "StatusSNS.ENERGY.Power")
    except (KeyError, TypeError) as exc:
        raise MeterError("Tasmota Status 8 answer has no StatusSNS.ENERGY.Power") from exc


class _PlugMeter(Meter, http.Polled):
    """A smart plug's power as the ``machine`` component."""

    remote = True

    def __init__(self, url: str, *, client: http.Client | None = None) -> None:
        self._base = url.rstrip("/")
        self._client = client or http.new_client()
        self._probe()

    @property
    def components(self) -> tuple[str, ...]:
        """Only ``machine``."""
        return ("machine",)

    @abstractmethod
    def _power_w(self) -> float:
        """The plug's power in W (blocking)."""

    @abstractmethod
    def _path(self) -> str | None:
        """The path that answers the power, once known."""

    @abstractmethod
    def _power_in(self, body: Any) -> float:
        """The power in W in the JSON answer to :meth:`_path`."""

    def read(self) -> dict[str, Reading]:
        """The plug's present power."""
        return {"machine": Reading(power_w=self._power_w())}

    def poll_url(self) -> str | None:
        """The status URL, when it is plain HTTP (see :class:`~meters.http.Polled`)."""
        path = self._path()
        return None if path is None else http.pollable(self._client, self._base + path)

    def poll_answer(self, status: int, body: bytes) -> dict[str, Reading]:
        """The power in the plug's answer (see :class:`~meters.http.Polled`)."""
        url = self._base + (self._path() or "")
        power_w = self._power_in(http.json_of(url, http.checked(url, status, body)))
        return {"machine": Reading(power_w=power_w)}

    def describe(self) -> str:
        """E.g. ``tasmota: machine from http://plug.local``."""
        return f"{self.name}: machine from {self._base}"

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class ShellyMeter(_PlugMeter):
    """A Shelly plug (Gen1, Gen2 or Gen3)."""

    name = "shelly"

    def __init__(self, url: str, *, client: http.Client | None = None) -> None:
        self.generation: int | None = None
        """Found on the first read: 2 (also Gen3's RPC API) or 1."""
        super().__init__(url, client=client)

    def _power_w(self) -> float:
        if self.generation != 1:
            try:
                body = http.get_json(self._client, self._base + SHELLY_GEN2_PATH)
                power = shelly_gen2_power_w(body)
            except MeterError:
                if self.generation == 2:
                    raise
            else:
                self.generation = 2
                return power
        power = shelly_gen1_power_w(http.get_json(self._client, self._base + SHELLY_GEN1_PATH))
        self.generation = 1
        return power

    def _path(self) -> str | None:
        return {1: SHELLY_GEN1_PATH, 2: SHELLY_GEN2_PATH}.get(self.generation or 0)

    def _power_in(self, body: Any) -> float:
        return shelly_gen1_power_w(body) if self.generation == 1 else shelly_gen2_power_w(body)

    def describe(self) -> str:
        """E.g. ``shelly: machine from http://plug.local (Gen2 API)``."""
        return f"{super().describe()} (Gen{self.generation} API)"


class TasmotaMeter(_PlugMeter):
    """A plug running Tasmota with an energy sensor."""

    name = "tasmota"

    def _power_w(self) -> float:
        return tasmota_power_w(http.get_json(self._client, self._base + TASMOTA_PATH))

    def _path(self) -> str | None:
        return TASMOTA_PATH

    def _power_in(self, body: Any) -> float:
        return tasmota_power_w(body)
