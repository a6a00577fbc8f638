"""The busy-machine warning works with every meter: the CPU probe, its warning, and
where it runs."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from accounting.study.findings import find
from accounting.study.host_load import cpu_busy_share, cpu_load_for
from accounting.study.runner import Baseline
from accounting.study.summary import summarise
from tests.support.study import row


def measured(cpu: float | None) -> Baseline:
    """A baseline read with a measured meter: no estimate floor or full load."""
    return Baseline("m1", 42.0, "rapl", False, "t", cpu_busy_share=cpu)


def warnings(*baselines: Baseline) -> list[str]:
    rows = [row(m, "code", 1.0, i) for m in ("m1", "m2") for i in range(12)]
    return find(summarise(rows, ("m1", "m2"), ("code",)), list(baselines), 4).warnings


def test_the_share_is_busy_over_all_jiffies_between_two_reads() -> None:
    reads = iter([(100, 1000), (250, 1200)])
    slept: list[float] = []
    assert cpu_busy_share(0.5, lambda: next(reads), slept.append) == pytest.approx(0.75)
    assert slept == [0.5]


@pytest.mark.parametrize(
    "reads",
    [[None, (1, 2)], [(1, 2), None], [(5, 10), (5, 10)]],  # no /proc/stat; no time passed
)
def test_no_share_when_it_cannot_be_told(reads: list[tuple[int, int] | None]) -> None:
    it = iter(reads)
    assert cpu_busy_share(0.0, lambda: next(it), lambda _: None) is None


def test_the_real_probe_reads_this_machine() -> None:
    share = cpu_busy_share(0.05)
    assert share is not None and 0.0 <= share <= 1.0


@pytest.mark.parametrize("cpu", [0.21, 0.6, 1.0])
def test_a_busy_machine_is_told_whatever_the_meter(cpu: float) -> None:
    (text,) = warnings(measured(cpu))
    assert f"CPUs were {100 * cpu:.0f}% busy" in text and "rapl" in text


@pytest.mark.parametrize("cpu", [None, 0.0, 0.2])
def test_a_quiet_or_unknown_machine_is_not_warned_about(cpu: float | None) -> None:
    assert warnings(measured(cpu)) == []


def test_one_warning_per_model_when_the_estimate_already_says_busy() -> None:
    both = Baseline("m1", 19.0, "estimate", True, "t", floor_w=10.0, full_w=20.0,
                    cpu_busy_share=0.9)  # fmt: skip
    (text,) = warnings(both)
    assert "90% of the way from the estimate's idle floor" in text


@pytest.mark.parametrize(
    ("url", "probe_s", "probes"),
    [
        ("http://127.0.0.1:8400", 2.0, True),
        ("http://localhost:8400", 2.0, True),
        ("http://[::1]:8400", 2.0, True),
        ("http://127.0.0.1:8400", 0.0, False),  # turned off
        ("http://gpu-box.lan:8400", 2.0, False),  # another host's load is not ours
        ("http://10.0.0.5:8400", 2.0, False),
    ],
)
def test_the_probe_runs_only_where_joulegate_is_this_machine(
    url: str, probe_s: float, probes: bool
) -> None:
    assert (cpu_load_for(url, probe_s) is not None) is probes


def test_the_probe_does_not_hold_the_event_loop() -> None:
    probe = cpu_load_for("http://127.0.0.1:1", 0.3)
    assert probe is not None

    async def main() -> tuple[float | None, int]:
        ticks = itertools.count()

        async def tick() -> None:
            while True:
                next(ticks)
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        share = await probe()
        ticker.cancel()
        return share, next(ticks)

    share, ticked = asyncio.run(main())
    assert share is not None and ticked > 5  # the loop ran while the probe watched
