"""Live: the machine now, for admins (and everyone in ``open`` mode).

``GET api/live`` answers, from what joulegate already holds (no meter is read, the
sampler's last second is averaged):

* power per component (W) and the machine's total;
* the gate: requests holding a slot and waiting for one;
* the meters' energy since start-up, split into *attributed* (some request was in
  flight; of which *idle*, the idle power over those windows, and *dynamic*, the
  rest, as the ledger's rows recorded by this host since start-up say) and
  *unattributed* (nothing in flight);
* the meters and carbon source in use, and each backend's health and models.

The ledger's part is read incrementally (rows after the last id seen), so a poll
costs the same on a ledger of a million rows as on an empty one.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency

from accounting.carbon import IntensitySource
from config.errors import Forbidden
from meters import Sampler
from proxy.console.guard import viewer
from proxy.console.playground import total_power_w
from proxy.console.state import SinceStart
from proxy.context import AppContext, MachinePower


def _energy(sampler: Sampler | None, since: SinceStart) -> dict[str, Any]:
    if sampler is None:
        return {
            "total_j": None,
            "unattributed_j": None,
            "attributed_j": None,
            "attributed_idle_j": since.idle_j,
            "attributed_dynamic_j": since.dynamic_j,
        }
    totals = {str(d["id"]): d["energy_j"] for d in sampler.device_readings()}
    total = total_power_w({k: float(v) if v is not None else None for k, v in totals.items()})
    unattributed = sampler.unattributed_j
    return {
        "total_j": total,
        "unattributed_j": unattributed,
        "attributed_j": None if total is None else max(0.0, total - unattributed),
        "attributed_idle_j": since.idle_j,
        "attributed_dynamic_j": since.dynamic_j,
    }


def _meters(sampler: Sampler) -> dict[str, Any]:
    return {"label": sampler.label, "estimated": sampler.estimated, "failing": sampler.failing()}


@get("/api/live", media_type=MediaType.JSON)
async def live(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The machine now (see the module doc)."""
    seen = await viewer(request, ctx)
    if not seen.sees_live:
        seen.require_user()  # 401 before 403 for a visitor who is not signed in
        raise Forbidden("Live is for admin keys", code="forbidden")
    sampler = ctx.get(Sampler)
    since = seen.state.since_start
    if seen.acc is not None:
        await since.update(seen.acc)
    first = power.first if (power := ctx.get(MachinePower)) else None
    watts = dict(first.power_w(1.0)) if first is not None else {}
    source = ctx.get(IntensitySource)  # type: ignore[type-abstract]  # fixed or live: either
    carbon = None
    if source is not None:
        reading = source.current()
        carbon = {"g_per_kwh": reading.g_per_kwh, "source": reading.source}
    return seen.keep(
        Response(
            {
                "power_w": watts,
                "total_power_w": total_power_w(watts),
                "in_flight": ctx.gate.in_flight,
                "waiting": ctx.gate.waiting,
                "paused": ctx.gate.paused,
                "max_concurrency": ctx.settings.max_concurrency,
                "energy": _energy(sampler, since),
                "meters": None if sampler is None else _meters(sampler),
                "carbon": carbon,
                "backends": ctx.router.health(),
            }
        )
    )


def route_handlers() -> list[Any]:
    """Live's handler (under the console's path)."""
    return [live]
