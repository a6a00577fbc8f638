"""Live: every machine now, for admins (and everyone in ``open`` mode).

``GET api/live`` answers, from what joulegate already holds (no meter is read, the
samplers' last second is averaged):

* ``machines``: each configured machine in order (``local`` alone without
  ``[[machines]]``), as :func:`~proxy.console.fleetview.machine_view` shows it: its
  name and whether it is local, its state (``idle``, ``busy``, ``cooldown``,
  ``thermal``), requests in flight and queued and its capacity, power per component
  (W) and its total, its meters' energy since start-up split into *attributed* (one
  of its requests was in flight; of which *idle* and *dynamic*, as the ledger's rows
  of this host since start-up say) and *unattributed* (nothing in flight), its
  meters (label, estimated, failing) and each of its backends' health and models;
* ``total``: the gateway as a whole, the machines added up;
* ``carbon``: the intensity and its source (one for the gateway).

The samplers are read in one worker thread per poll, never on the event loop; the
ledger's part is read incrementally (rows after the last id seen), so a poll costs
the same on a ledger of a million rows as on an empty one.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency

from accounting.carbon import IntensitySource
from config.errors import Forbidden
from proxy.console.fleetview import gateway_view, machine_view, read_all_meters
from proxy.console.guard import viewer
from proxy.console.state import Recorded
from proxy.context import AppContext, MachinePower
from proxy.gate import waiting_on


@get("/api/live", media_type=MediaType.JSON)
async def live(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """Every machine now (see the module doc)."""
    seen = await viewer(request, ctx)
    if not seen.sees_live:
        seen.require_user()  # 401 before 403 for a visitor who is not signed in
        raise Forbidden("Live is for admin keys", code="forbidden")
    since = seen.state.since_start
    if seen.acc is not None:
        await since.update(seen.acc)
    power = ctx.get(MachinePower)
    meters = await read_all_meters(power.by_machine if power is not None else {})
    recorded = since.by_machine if seen.acc is not None else None
    machines = [
        machine_view(
            m, meters.get(m.name), None if recorded is None else recorded.get(m.name, Recorded())
        )
        for m in ctx.machines.machines
    ]
    source = ctx.get(IntensitySource)  # type: ignore[type-abstract]  # fixed or live: either
    carbon = None
    if source is not None:
        reading = source.current()
        carbon = {"g_per_kwh": reading.g_per_kwh, "source": reading.source}
    total = gateway_view(machines, waiting_on([m.gate for m in ctx.machines.machines]))
    return seen.keep(Response({"machines": machines, "total": total, "carbon": carbon}))


def route_handlers() -> list[Any]:
    """Live's handler (under the console's path)."""
    return [live]
