"""GPU energy, power and temperature from NVML (the ``nvidia-ml-py`` package).

On Volta and newer each GPU has a cumulative energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules) that the driver updates
about every 100 ms; where it is not supported the meter reports power only
(``nvmlDeviceGetPowerUsage``, milliwatts) and the sampler integrates it. The
``pynvml`` module is passed in so tests can hand over a fake one; every
``NVMLError`` is translated into a :class:`~config.errors.MeterError` by
:func:`_translated`, the one place that meets it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from config.errors import MeterError, MeterUnavailable
from meters.base import Meter, MeterAbsent, Reading

P = ParamSpec("P")
R = TypeVar("R")


def _translated(
    method: Callable[Concatenate[NvmlMeter, P], R],
) -> Callable[Concatenate[NvmlMeter, P], R]:
    """Turn the NVML module's NVMLError into MeterError, chained."""

    @functools.wraps(method)
    def wrapper(self: NvmlMeter, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except self.nvml.NVMLError as exc:
            raise MeterError(f"NVML {method.__name__.strip('_')}: {exc}") from exc

    return cast("Callable[Concatenate[NvmlMeter, P], R]", wrapper)


_ABSENT = frozenset({9, 12})
"""NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIBRARY_NOT_FOUND: no NVIDIA stack here."""


def load_pynvml() -> Any:
    """The real ``pynvml`` module; MeterAbsent if the package is missing."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise MeterAbsent("the nvidia-ml-py package is not installed") from exc


class NvmlMeter(Meter):
    """All GPUs (or the given indices) as one ``gpu`` component."""

    name = "nvml"
    counter_resolution_s = 0.1

    def __init__(self, nvml: Any | None = None, indices: Sequence[int] = ()) -> None:
        self.nvml = nvml if nvml is not None else load_pynvml()
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._initialised = False
        self.counter_reason: str | None = None
        """Why the energy counter is not used (None when it is)."""
        try:
            self._open(indices)
        except MeterAbsent:
            self.close()
            raise
        except MeterError as exc:
            self.close()
            if getattr(exc.__cause__, "value", None) in _ABSENT:
                raise MeterAbsent(str(exc)) from exc
            raise MeterUnavailable(str(exc)) from exc

    @_translated
    def _open(self, indices: Sequence[int]) -> None:
        self.nvml.nvmlInit()
        self._initialised = True
        count = int(self.nvml.nvmlDeviceGetCount())
        chosen = list(indices) or list(range(count))
        if not chosen:
            raise MeterAbsent("NVML finds no NVIDIA GPU")
        for i in chosen:
            if not 0 <= i < count:
                raise MeterError(f"GPU index {i} not present ({count} GPUs)")
            handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
            name = self.nvml.nvmlDeviceGetName(handle)
            self._handles.append(handle)
            self._names.append(name.decode() if isinstance(name, bytes) else str(name))
        for i, handle in zip(chosen, self._handles, strict=True):
            try:
                self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except self.nvml.NVMLError as exc:
                # One GPU without the counter makes the sum meaningless: use power for all.
                self.counter_reason = f"GPU {i}: energy counter unavailable ({exc})"
                break
        self.nvml.nvmlDeviceGetPowerUsage(self._handles[0])

    @property
    def components(self) -> tuple[str, ...]:
        """Only ``gpu``."""
        return ("gpu",)

    @property
    def names(self) -> tuple[str, ...]:
        """The metered GPUs' names, in index order."""
        return tuple(self._names)

    @property
    def uses_counter(self) -> bool:
        """Whether energy comes from the hardware counter (else integrated power)."""
        return self.counter_reason is None

    @_translated
    def read(self) -> dict[str, Reading]:
        """Summed counter (J) and power (W) of the metered GPUs."""
        nvml = self.nvml
        power_w = 0.0
        for h in self._handles:
            power_w += nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
        if not self.uses_counter:
            return {"gpu": Reading(power_w=power_w)}
        energy_j = 0.0
        for h in self._handles:
            energy_j += nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
        return {"gpu": Reading(energy_j=energy_j, power_w=power_w)}

    @_translated
    def temperatures_c(self) -> dict[str, float]:
        """Core temperature of each metered GPU."""
        sensor = self.nvml.NVML_TEMPERATURE_GPU
        return {
            f"gpu{i}": float(self.nvml.nvmlDeviceGetTemperature(h, sensor))
            for i, h in enumerate(self._handles)
        }

    def describe(self) -> str:
        """E.g. ``nvml: 1 GPU (NVIDIA H100 80GB HBM3), energy counter``."""
        n = len(self._handles)
        names = ", ".join(sorted(set(self._names)))
        how = "energy counter" if self.uses_counter else f"power polling ({self.counter_reason})"
        return f"nvml: {n} GPU{'s' if n != 1 else ''} ({names}), {how}"

    def close(self) -> None:
        """Shut NVML down (once)."""
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(self.nvml.NVMLError):
                self.nvml.nvmlShutdown()
