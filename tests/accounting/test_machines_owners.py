"""Several gateways on one ledger, each machine owned by one gateway (its group)."""

from __future__ import annotations

import dataclasses

import httpx

from accounting.ledger.owners import MachineOwners
from tests.support.ledger import Store
from tests.support.machines import chat, gateway, loopback_machines

SPECS = [("a", ("m",), 100.0), ("b", ("m",), 200.0)]


async def test_gateways_with_their_own_machine_groups_share_a_ledger(store: Store) -> None:
    one = {"ledger": dataclasses.replace(store.settings, node_name="gw-1")}
    two = {"ledger": dataclasses.replace(store.settings, node_name="gw-2")}
    async with loopback_machines(SPECS) as (a, b):
        async with (
            gateway([a], **one) as g1,
            gateway([b], **two) as g2,
            httpx.AsyncClient(timeout=30) as c,
        ):
            for g in (g1, g2, g1):
                assert (
                    await c.post(g.url + "/v1/chat/completions", json=chat("m"))
                ).status_code == 200
            owners = [g.app.state.ctx.get(MachineOwners) for g in (g1, g2)]
            assert [await o.check() for o in owners] == [{}, {}]
            ready = (await c.get(g1.url + "/readyz")).json()
            report = (await c.get(g1.url + "/v1/energy/report", params={"by": "machine"})).json()
        # A third gateway given machine a, which gw-1 serves: flagged, both named.
        three = {"ledger": dataclasses.replace(store.settings, node_name="gw-3")}
        async with gateway([a], **three) as g3, httpx.AsyncClient(timeout=30) as c:
            shared = await g3.app.state.ctx.get(MachineOwners).check()
            flagged = (await c.get(g3.url + "/readyz")).json()
    (check,) = [ch for ch in ready["checks"] if ch["name"] == "machine_owners"]
    assert check["ok"] is True and check["host"] == "gw-1"
    assert {g["machine"]: g["requests"] for g in report["groups"]} == {"a": 2, "b": 1}
    assert shared == {"a": ["gw-1"]}
    (check,) = [ch for ch in flagged["checks"] if ch["name"] == "machine_owners"]
    assert check["ok"] is False and check["shared"] == {"a": ["gw-1"]}
    assert flagged["status"] == "not_ready"
    rows = sorted((r["machine"], r["host"]) for r in await store.rows())
    assert rows == [("a", "gw-1"), ("a", "gw-1"), ("b", "gw-2")]
