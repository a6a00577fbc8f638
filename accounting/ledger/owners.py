"""One gateway per machine: several joulegates on one ledger never share a machine.

A machine's gate and its meters' windows live in one process: two gateways
admitting requests to one machine would each believe it served one request at a
time while it served two, and each would charge its request the whole machine's
energy. So each machine belongs to exactly one gateway, *by configuration*: the
gateways sharing a PostgreSQL ledger are given disjoint ``[[machines]]`` groups
(one gateway per machine group), and a supervisor (systemd, Kubernetes with one
replica per group) restarts a gateway that fails, with the same group. A lease in
the database was the alternative; it buys automatic failover but adds a failure of
its own (a lease lapsing while a request is in flight on a gateway cut off from the
database, which then serves a machine it no longer owns), and the failover it buys
is what the supervisor already gives.

What the ledger can check is that the configuration holds: this module watches for
rows another host (``ledger.node_name``) recorded for one of this gateway's machines
in the last :data:`OWNER_WINDOW_S`, logs a warning naming both, and fails the
``machine_owners`` check of ``/readyz`` while it lasts. A replacement gateway with
the old one's ``node_name`` is the same owner and is not flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from accounting.ledger.rows import iso, utcnow
from accounting.ledger.stage import Accounting
from proxy.context import AppContext

log = logging.getLogger("joulegate.ledger")

OWNER_WINDOW_S = 600.0
"""How far back another host's rows for one of this gateway's machines count."""
CHECK_EVERY_S = 60.0
"""How often the ledger is asked."""


class MachineOwners:
    """Finds the machines of this gateway that another host has served lately."""

    def __init__(self, acc: Accounting, machines: Sequence[str]) -> None:
        self._acc = acc
        self._machines = tuple(machines)
        self.others: dict[str, list[str]] = {}
        """Machine -> the other hosts that recorded rows for it lately."""

    async def check(self, now: dt.datetime | None = None) -> dict[str, list[str]]:
        """Ask the ledger once; warn about a machine newly served by another host."""
        since = iso((now or utcnow()) - dt.timedelta(seconds=OWNER_WINDOW_S))
        marks = ", ".join("?" * len(self._machines))
        rows = await self._acc.ledger.fetchall(
            "SELECT DISTINCT machine, host FROM requests"  # noqa: S608 - placeholders only
            f" WHERE ts >= ? AND machine IN ({marks}) AND host IS NOT NULL AND host != ?",
            (since, *self._machines, self._acc.host),
        )
        found: dict[str, list[str]] = {}
        for machine, host in rows:
            found.setdefault(machine, []).append(host)
        for machine, hosts in found.items():
            if machine not in self.others:
                log.warning(
                    "machine %s is also served by %s (rows in the last %.0f s): give each "
                    "machine to one gateway only", machine, ", ".join(sorted(hosts)),
                    OWNER_WINDOW_S,
                )  # fmt: skip
        self.others = {m: sorted(h) for m, h in found.items()}
        return self.others

    def health(self) -> dict[str, Any]:
        """The ``machine_owners`` check of ``/readyz``."""
        return {"name": "machine_owners", "ok": not self.others, "shared": self.others,
                "host": self._acc.host}  # fmt: skip

    async def watch(self) -> None:
        """Check every :data:`CHECK_EVERY_S` until cancelled; failures are logged."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("checking the machines' owners in the ledger failed")
            await asyncio.sleep(CHECK_EVERY_S)


@contextlib.asynccontextmanager
async def owners_component(ctx: AppContext) -> AsyncIterator[None]:
    """With ``[[machines]]``: watch that no other gateway serves this one's machines."""
    acc = ctx.get(Accounting)
    if acc is None or not ctx.settings.machines:
        yield None
        return
    owners = MachineOwners(acc, [m.name for m in ctx.settings.machines])
    ctx.publish(owners)
    ctx.ready_checks.append(owners.health)
    task = asyncio.create_task(owners.watch(), name="machine-owners")
    try:
        yield None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        ctx.withdraw(MachineOwners)
