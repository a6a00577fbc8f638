"""Per-machine series on ``/metrics``, read from the machines when scraped::

    joulegate_machine_queue_length{machine}           gauge, requests waiting for it
    joulegate_machine_in_flight{machine}              gauge, requests it serves now
    joulegate_machine_paused{machine}                 gauge, 1 in a thermal pause or cool-down
    joulegate_machine_cooldowns_total{machine}        counter, cool-downs begun
    joulegate_machine_power_watts{machine,component}  gauge, its meters' power now
    joulegate_machine_energy_joules_total{machine,component}  counter, its meters' energy
    joulegate_machine_unattributed_energy_joules_total{machine}  counter, with nothing in flight

``machine`` takes only the configured machines' names (``local`` without
``[[machines]]``), so the series are as many as the machines. The energy counter is
the meters' whole reading, requests and idle alike: over a machine that runs only
joulegate's requests it is what its wall meter shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy.context import AppContext, MachinePower

log = logging.getLogger("joulegate.metrics")

Family = GaugeMetricFamily | CounterMetricFamily


class MachineCollector(Collector):
    """The ``joulegate_machine_*`` series (see the module's docstring)."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    @staticmethod
    def _families() -> list[Family]:
        m = ["machine"]
        return [
            GaugeMetricFamily("joulegate_machine_queue_length",
                              "Requests waiting for a slot on the machine.", labels=m),
            GaugeMetricFamily("joulegate_machine_in_flight",
                              "Requests the machine serves now.", labels=m),
            GaugeMetricFamily("joulegate_machine_paused",
                              "1 while the machine admits nothing (thermal pause or "
                              "cool-down).", labels=m),
            CounterMetricFamily("joulegate_machine_cooldowns",
                                "Cool-downs the machine has begun.", labels=m),
            GaugeMetricFamily("joulegate_machine_power_watts",
                              "Power the machine's meters show now (average over the last "
                              "second), in W.", labels=[*m, "component"]),
            CounterMetricFamily("joulegate_machine_energy_joules",
                                "Energy the machine's meters measured since start-up, in J.",
                                labels=[*m, "component"]),
            CounterMetricFamily("joulegate_machine_unattributed_energy_joules",
                                "Energy the machine's meters measured while none of its "
                                "requests was in flight, in J.", labels=m),
        ]  # fmt: skip

    def describe(self) -> Iterable[Family]:
        """The families without samples."""
        return self._families()

    def collect(self) -> Iterable[Family]:
        """One sample per machine (and component), never reading a meter."""
        queue, busy, paused, cooldowns, power, energy, idle = out = self._families()
        for machine in self._ctx.machines.machines:
            name, gate = machine.name, machine.gate
            queue.add_metric([name], gate.waiting)
            busy.add_metric([name], gate.in_flight)
            paused.add_metric([name], 1.0 if gate.paused else 0.0)
            cooldowns.add_metric([name], gate.cooldowns)
            by_machine = mp.by_machine if (mp := self._ctx.get(MachinePower)) else {}
            meters = by_machine.get(name)
            if meters is None:
                continue
            idle.add_metric([name], meters.unattributed_j)
            try:
                readings = list(meters.device_readings())
            except Exception:
                log.debug("could not read %s's power for /metrics", name, exc_info=True)
                continue
            for r in readings:
                component = str(r.get("type"))
                if isinstance(w := r.get("power_w"), float | int):
                    power.add_metric([name, component], float(w))
                if isinstance(j := r.get("energy_j"), float | int):
                    energy.add_metric([name, component], float(j))
        return out
