"""The meters' place in the proxy: a pipeline stage and its app component.

A request's window runs from ``on_admitted`` (it holds a gate slot) to
``on_finished`` (the backend is done; the slot is released only after every
``on_finished`` hook). The stage then records the window's measurement on the
:class:`~proxy.Exchange` (:meth:`~proxy.exchange.Exchange.record_measurement`):
the whole :class:`~proxy.figures.WindowEnergy` and the summary fields
(``energy_j``, ``energy_dynamic_j``, ``energy_by_component_j``, ``meter``, …) the
stages after it read (carbon, ledger, telemetry). :mod:`proxy.render` shows it to
the client, as the ``energy`` object and the ``x-energy-*`` headers.

A value that could not be measured is absent from the headers and ``null`` in
the body, with a ``reason``; it is never a made-up zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from meters.closer import ShareCloser
from meters.estimate import EstimateMeter
from meters.request_work import WorkOf
from meters.sampler import Sampler
from meters.sharing import OverlapBook
from proxy.exchange import Exchange, Stage
from proxy.host import Host

log = logging.getLogger("joulegate.meters")


class MeterStage(Stage):
    """Opens a window when a request is admitted and measures it when it finishes.

    With ``shared`` (more than one gate slot) windows may overlap: each request is
    kept in an :class:`~meters.sharing.OverlapBook`, whose intervals the
    :class:`~meters.closer.ShareCloser` splits as they close, and charged its fair
    share. With one slot they never do, and the book is not kept at all.
    """

    name = "meters"

    def __init__(self, sampler: Sampler, *, shared: bool = True) -> None:
        self.sampler = sampler
        self.overlaps = OverlapBook() if shared else None
        self.closer = ShareCloser(sampler, self.overlaps) if self.overlaps is not None else None

    async def on_admitted(self, ex: Exchange) -> None:
        """Open the window at the admission instant."""
        start = ex.window.admitted_s or time.monotonic()
        token = ex.scratch[self.name] = self.sampler.open_window(start, sample_edge=False)
        if token.alone:  # in a crowd the shares go by interval: no read at each edge
            # Read the start edge once the request is written to the backend: the loop
            # runs call_soon callbacks when the forwarder awaits the answer.
            asyncio.get_running_loop().call_soon(self.sampler.sample_soon)
        if self.overlaps is not None:
            self.overlaps.open(ex.request_id, start, WorkOf(ex, start))

    async def on_finished(self, ex: Exchange) -> None:
        """Close the window, measure it and put the numbers on the exchange."""
        token = ex.scratch.pop(self.name, None)
        if token is None:
            return  # never admitted: it used no energy of its own
        end = ex.window.finished_s or time.monotonic()
        book = self.overlaps
        try:
            await self.sampler.fresh_sample(token=token)
            energy = self.sampler.measure(token, end)
        finally:
            self.sampler.close_window(token, end)
            if book is not None:
                book.close(ex.request_id, end)
        share = None
        closer = self.closer
        shared = energy.energy_j is not None and not energy.exclusive
        # O(1) here: the intervals up to the end are split off the loop.
        if book is not None and closer is not None and shared and await closer.through(end):
            share = book.charged(ex.request_id)
        if share is not None:  # overlapping windows: this request's fair share
            ex.record_measurement(
                energy, attribution=share.method, concurrency_mean=share.concurrency_mean,
                share_j=share.energy_j, share_dynamic_j=share.dynamic_j,
            )  # fmt: skip
        elif energy.exclusive:
            ex.record_measurement(energy, attribution="exclusive", concurrency_mean=1.0)
        else:
            ex.record_measurement(energy)


def meters_check(sampler: Sampler, host: Host | None, machine: str | None = None) -> dict[str, Any]:
    """A machine's ``/readyz`` meters check: which meters, whether estimated, what each
    reads, the host they found (a local machine's) and the estimate's power range."""
    failing = sampler.failing()
    check: dict[str, Any] = {
        "name": "meters",
        "machine": machine,
        "ok": bool(sampler.meters) and len(failing) < len(sampler.meters),
        "meter": sampler.label,
        "estimated": sampler.estimated,
        "failing": failing,
        # What each meter reads (``nvml: 1 GPU (NVIDIA H100 80GB HBM3), energy counter``):
        # the AI Energy Score run checks the hardware against the rating's from here.
        "devices": [m.describe() for m in sampler.meters],
        "host": host.as_dict() if host is not None else None,
    }
    estimates = [m for m in sampler.meters if isinstance(m, EstimateMeter)]
    if estimates:
        floor_w, full_w = estimates[0].power_range_w()
        check["estimate_floor_w"], check["estimate_full_w"] = round(floor_w, 3), round(full_w, 3)
        check["estimate_model"] = estimates[0].estimate_model
    return check
