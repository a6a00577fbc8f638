"""The pipeline calls each stage's hooks in stage order, and a refusal closes only the
stages that saw the request: whichever hooks each stage overrides."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from config.errors import BadRequest
from proxy.exchange import Exchange, Pipeline, Stage
from proxy.gate import Window

HOOKS = ("on_arrival", "on_admitted", "on_finished", "on_closed")


def _stage(name: str, hooks: tuple[str, ...], calls: list[str], refuse: bool) -> Stage:
    """A stage overriding only ``hooks``, noting each call; ``refuse`` makes its
    ``on_arrival`` (when it has one) refuse the request."""

    def hook(kind: str) -> Callable[[Stage, Exchange], Coroutine[Any, Any, None]]:
        async def run(self: Stage, ex: Exchange) -> None:
            calls.append(f"{name}.{kind}")
            if refuse and kind == "on_arrival":
                raise BadRequest("refused")

        return run

    body: dict[str, Any] = {"name": name, **{kind: hook(kind) for kind in hooks}}
    stage: Stage = type(f"Stage_{name}", (Stage,), body)()
    return stage


def _exchange() -> Exchange:
    return Exchange(
        request_id="r", method="POST", path="/v1/chat/completions", endpoint="chat/completions",
        headers={}, window=Window(arrived_s=time.monotonic()), arrived_at=dt.datetime.now(dt.UTC),
        gated=True,
    )  # fmt: skip


SUBSETS = [c for n in range(len(HOOKS) + 1) for c in itertools.combinations(HOOKS, n)]


@pytest.mark.parametrize(
    "hooks", list(itertools.product(SUBSETS[::3], SUBSETS[1::4], SUBSETS[::2]))
)
async def test_every_overridden_hook_runs_in_stage_order(
    hooks: tuple[tuple[str, ...], ...],
) -> None:
    calls: list[str] = []
    pipeline = Pipeline([_stage(str(i), h, calls, refuse=False) for i, h in enumerate(hooks)])
    ex = _exchange()
    await pipeline.arrival(ex)
    await pipeline.admitted(ex)
    await pipeline.finished(ex)
    await pipeline.closed(ex)
    expected = [f"{i}.{kind}" for kind in HOOKS for i, h in enumerate(hooks) if kind in h]
    assert calls == expected


@pytest.mark.parametrize("refuser", [0, 1, 2, 3])
@pytest.mark.parametrize("closers", [(0, 1, 2, 3), (1, 3), (2,), ()])
async def test_a_refusal_closes_the_stages_up_to_the_refuser_only(
    refuser: int, closers: tuple[int, ...]
) -> None:
    """Stage ``refuser`` refuses on arrival: only the stages before it ran on_arrival,
    and on_closed runs for those of them (and the refuser) that have one."""
    calls: list[str] = []
    stages = []
    for i in range(4):
        hooks: tuple[str, ...] = ("on_arrival",) if i == refuser or i % 2 == 0 else ()
        hooks += ("on_closed",) if i in closers else ()
        stages.append(_stage(str(i), hooks, calls, refuse=i == refuser))
    pipeline = Pipeline(stages)
    ex = _exchange()
    with pytest.raises(BadRequest):
        await pipeline.arrival(ex)
    await pipeline.refused(ex)
    arrived = [f"{i}.on_arrival" for i in range(refuser + 1) if i == refuser or i % 2 == 0]
    closed = [f"{i}.on_closed" for i in closers if i <= refuser]
    assert calls == arrived + closed
