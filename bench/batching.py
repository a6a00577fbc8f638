"""Metering a batching server for real: SmolLM2 on ``llama-server --parallel N``.

``python -m bench batching [--quick] [--parts=abc] [--threads=N]`` prints three tables
(``--threads``: llama-server's, default one per core but one):

a. **Conservation**: over a batched run (``max_concurrency=4`` before ``--parallel 4``)
   the requests' attributed energy plus what was unattributed (nothing in flight)
   against the meters' own total over the run, summed from the sampler's intervals.
b. **J per output token**, serialised (``max_concurrency=1``) against batched
   (``max_concurrency=4``), for the same prompts, rounds alternating between the two.
c. **Throughput**: 8 concurrent clients through joulegate (``max_concurrency=8``, its
   own process, every default stage) against the same clients straight to
   ``llama-server --parallel 8``, alternating, in output tokens per second.

Half the requests stream (shared by token events), half do not (placed by
llama-server's ``timings``). On a machine without RAPL or a GPU the meter is the
labelled estimate, from machine-wide ``/proc/stat``: other processes' load lands
in the figures, which is why every comparison alternates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.serve import serve_here, spawn_process
from config import LedgerSettings, Settings
from meters.attribution import Interval
from meters.sampler import Sampler
from proxy.app import create_app, default_components
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage
from proxy.llamacpp import BackendStartError, llama_server

MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Write a haiku about the sea.",
    "Explain what a CPU cache is in two sentences.",
    "List three uses of copper.",
    "What is the capital of France? Answer in one sentence.",
    "Give a short tip for writing clear code.",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue? Keep it short.",
    "Name two planets and one fact about each.",
]


@dataclass
class Probe(Stage):
    """Keeps every finished exchange and tallies the meters' total over the run."""

    name = "bench-probe"
    seen: list[Exchange] = field(default_factory=list)
    intervals: list[Interval] = field(default_factory=list)
    sampler: Sampler | None = None

    async def on_finished(self, ex: Exchange) -> None:
        if ex.gated:
            self.seen.append(ex)

    async def tally(self, stop: asyncio.Event) -> None:
        """Sum the sampler's intervals in steps, 0.3 s behind now (so every step is
        interpolated between samples: the sampler keeps only a few seconds), until
        the step passes the instant ``stop`` was set."""
        assert self.sampler is not None
        prev = time.monotonic() - 0.3
        stop_at: float | None = None
        while stop_at is None or prev < stop_at:
            await asyncio.sleep(0.5)
            if stop_at is None and stop.is_set():
                stop_at = time.monotonic()
            now = time.monotonic() - 0.3
            self.intervals += self.sampler.intervals(prev, now)
            prev = now

    def energy_in(self, spans: list[tuple[float, float]]) -> float:
        """The meters' energy inside ``spans`` (intervals cut pro rata at their edges)."""
        total = 0.0
        for iv in self.intervals:
            length = iv.end_s - iv.start_s
            for a, b in spans:
                inside = min(b, iv.end_s) - max(a, iv.start_s)
                if inside > 0 and length > 0:
                    total += iv.energy_j * inside / length
        return total


def probe_component(probe: Probe) -> Component:
    """Yields ``probe`` with the sampler the meters component opened."""

    @contextlib.asynccontextmanager
    async def make(ctx: AppContext) -> AsyncIterator[Stage]:
        probe.sampler = ctx.require(Sampler, "the batching bench")
        yield probe

    return make


@contextlib.asynccontextmanager
async def serving(settings: Settings, probe: Probe) -> AsyncIterator[str]:
    """joulegate with every default stage and ``probe``, on loopback in this loop."""
    app = create_app(settings, components=[*default_components(), probe_component(probe)])
    async with serve_here(app) as url:
        yield url


def _body(prompt: str, stream: bool, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0.0, "stream": stream,
    }  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def ask(c: httpx.AsyncClient, url: str, prompt: str, stream: bool, max_tokens: int) -> int:
    """One chat request; its output tokens (from usage)."""
    body = _body(prompt, stream, max_tokens)
    if not stream:
        r = await c.post(url + "/v1/chat/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])
    tokens = 0
    async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = httpx.Response(200, content=line[6:]).json().get("usage")
                tokens = int(usage["completion_tokens"]) if usage else tokens
    return tokens


async def round_of(c: httpx.AsyncClient, url: str, prompts: list[str], max_tokens: int) -> None:
    """All ``prompts`` at once (every other one streamed)."""
    await asyncio.gather(*(ask(c, url, p, i % 2 == 0, max_tokens) for i, p in enumerate(prompts)))


def union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``spans`` merged into disjoint spans, in order."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def conservation(probe: Probe) -> tuple[float, float, float]:
    """(attributed, unattributed, meter total) over the probe's run. Unattributed is
    the meters' energy while no request was in flight (the live intervals are cut at
    every window edge, so that is all the attribution leaves to nobody)."""
    spans = [(ex.window.admitted_s or 0.0, ex.window.finished_s or 0.0) for ex in probe.seen]
    total = sum(i.energy_j for i in probe.intervals)
    attributed = sum(ex.energy_j or 0.0 for ex in probe.seen)
    return attributed, total - probe.energy_in(union(spans)), total


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _methods(seen: list[Exchange]) -> str:
    counts: dict[str, int] = {}
    for ex in seen:
        key = f"{'stream' if ex.stream else 'whole'}:{ex.attribution}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


async def energy_per_token(url: str, rounds: int, max_tokens: int) -> None:
    """Parts (a) and (b): two joulegates (1 and 4 slots) before one ``--parallel 4``."""
    with tempfile.TemporaryDirectory(prefix="joulegate-bench-batching-") as data:
        await _energy_per_token(url, rounds, max_tokens, data)


async def _energy_per_token(url: str, rounds: int, max_tokens: int, data: str) -> None:
    probes = {1: Probe(), 4: Probe()}

    def settings(slots: int) -> Settings:
        ledger = LedgerSettings(path=os.path.join(data, f"ledger-{slots}.sqlite3"))
        return Settings(backend_url=url, max_concurrency=slots, ledger=ledger, log_level="warning")

    async with (
        serving(settings(1), probes[1]) as serial,
        serving(settings(4), probes[4]) as batched,
        httpx.AsyncClient(timeout=300) as c,
    ):
        await ask(c, url, PROMPTS[0], False, 8)  # warm the model up
        stop = asyncio.Event()
        tallies = [asyncio.create_task(p.tally(stop)) for p in probes.values()]
        spans: dict[int, list[tuple[float, float]]] = {1: [], 4: []}
        for k in range(rounds):  # alternate, starting with each mode in turn
            order = [(1, serial), (4, batched)] if k % 2 == 0 else [(4, batched), (1, serial)]
            for slots, target in order:
                t = time.monotonic()
                await round_of(c, target, PROMPTS, max_tokens)
                spans[slots].append((t, time.monotonic()))
        stop.set()
        await asyncio.gather(*tallies)
    meter = probes[4].seen[0].meter if probes[4].seen else "?"
    estimated = probes[4].seen[0].energy_estimated if probes[4].seen else False
    print(f"\nmeter: {meter}{' (estimated)' if estimated else ''}; {rounds} alternating rounds"
          f" of {len(PROMPTS)} prompts, max_tokens {max_tokens}, half streamed\n")  # fmt: skip
    print("(a) conservation over the run")
    print(f"{'max_concurrency':>16} {'attributed J':>13} {'unattributed J':>15} "
          f"{'meter total J':>14} {'error':>9}  attribution")  # fmt: skip
    for slots, p in probes.items():
        got, left, total = conservation(p)
        err = abs(got + left - total) / total if total else float("nan")
        print(f"{slots:>16} {got:>13.2f} {left:>15.2f} {total:>14.2f} {err:>9.1e}  "
              f"{_methods(p.seen)}")  # fmt: skip
    print("\n(b) energy per output token, same prompts")
    print("    J/token: the requests' own energy; machine J/token: the meters' whole energy")
    print("    while that mode's rounds ran (idle included), per output token")
    print(f"{'max_concurrency':>16} {'requests':>9} {'out tokens':>11} {'J/token':>9} "
          f"{'machine J/token':>16} {'concurrency_mean':>17}  round s (in order)")  # fmt: skip
    for slots, p in probes.items():
        tokens = max(1, sum(ex.completion_tokens or 0 for ex in p.seen))
        joules = sum(ex.energy_j or 0.0 for ex in p.seen)
        machine = p.energy_in(spans[slots])
        round_s = " ".join(f"{b - a:.1f}" for a, b in spans[slots])
        conc = statistics.mean(ex.concurrency_mean or 1.0 for ex in p.seen)
        print(f"{slots:>16} {len(p.seen):>9} {tokens:>11} {joules / tokens:>9.4f} "
              f"{machine / tokens:>16.4f} {conc:>17.2f}  {round_s}")  # fmt: skip


def _failure(exc: httpx.HTTPError) -> str:
    """What a failed request met: the status and error code, or the transport error."""
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            code = exc.response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError, httpx.ResponseNotRead):
            code = "?"
        return f"{exc.response.status_code} {code}"
    return type(exc).__name__


async def _clients(
    url: str, n: int, seconds: float, max_tokens: int
) -> tuple[float, collections.Counter[str]]:
    """``n`` clients asking back to back for ``seconds``: output tokens per second,
    and what the failed requests met (llama-server closes a keep-alive connection after
    a few requests, and a client may have just reused it: counted, not retried)."""
    deadline = time.perf_counter() + seconds
    tokens = 0
    errors: collections.Counter[str] = collections.Counter()

    async def client(c: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        k = i
        while time.perf_counter() < deadline:
            try:
                # Not `tokens += await ...`: that reads tokens before the await and
                # loses what the other clients added meanwhile.
                got = await ask(c, url, PROMPTS[k % len(PROMPTS)], k % 2 == 0, max_tokens)
                tokens += got
            except httpx.HTTPError as exc:
                errors[_failure(exc)] += 1
            k += n

    t = time.perf_counter()
    limits = httpx.Limits(max_connections=n + 2)
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        await asyncio.gather(*(client(c, i) for i in range(n)))
    return tokens / (time.perf_counter() - t), errors


async def throughput(url: str, rounds: int, seconds: float, max_tokens: int) -> None:
    """Part (c): joulegate in its own process before ``--parallel 8``, against direct."""
    env = {"JOULEGATE_MAX_CONCURRENCY": "8"}
    with spawn_process(["bench.serve", "full", "PORT", url], env) as (proxied, pid):
        await _clients(proxied, 8, 2.0, max_tokens)  # warm both up
        rates: dict[str, list[float]] = {"direct": [], "joulegate": []}
        errors: dict[str, collections.Counter[str]] = {
            "direct": collections.Counter(),
            "joulegate": collections.Counter(),
        }
        proxy_cpu_s: list[float] = []
        for k in range(rounds):
            order = [("direct", url), ("joulegate", proxied)]
            for name, target in order if k % 2 == 0 else order[::-1]:
                before = cpu_s(pid)
                rate, failed = await _clients(target, 8, seconds, max_tokens)
                rates[name].append(rate)
                errors[name] += failed
                if name == "joulegate":
                    proxy_cpu_s.append(cpu_s(pid) - before)
    print(f"\n(c) throughput, 8 concurrent clients, {rounds} alternating rounds of {seconds:.0f} s")
    print(f"{'path':>10} {'out tokens/s (each round)':>40} {'median':>8} {'failed':>7}")
    for name, xs in rates.items():
        each = " ".join(f"{x:.1f}" for x in xs)
        failed = errors[name]
        what = ", ".join(f"{k} x {v}" for k, v in failed.most_common())
        print(f"{name:>10} {each:>40} {statistics.median(xs):>8.1f} {failed.total():>7}"
              f"{'  (' + what + ')' if what else ''}")  # fmt: skip
    print(f"joulegate's own CPU per round: {' '.join(f'{x:.2f}' for x in proxy_cpu_s)} s")
    ratio = statistics.median(rates["joulegate"]) / statistics.median(rates["direct"])
    print(f"joulegate / direct: {ratio:.1%} (target >= 95%)")


async def main() -> None:
    """Run (a), (b) and (c); ``--quick`` shortens each, ``--parts=c`` runs only some."""
    quick = "--quick" in sys.argv
    parts = next((a[8:] for a in sys.argv if a.startswith("--parts=")), "abc")
    threads = int(next((a[10:] for a in sys.argv if a.startswith("--threads=")), "0"))
    # One core left to joulegate and the clients: llama.cpp's threads wait for each other
    # every step, so one preempted thread stalls all of them (with every core given to
    # it, 8-client throughput swung 20-120 tokens/s from round to round here).
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    try:
        if "a" in parts or "b" in parts:
            with llama_server(MODEL, parallel=4, threads=threads, n_ctx=1024) as url:
                await energy_per_token(url, rounds=2 if quick else 4,
                                       max_tokens=24 if quick else 48)  # fmt: skip
        if "c" in parts:
            with llama_server(MODEL, parallel=8, threads=threads, n_ctx=512) as url:
                await throughput(url, rounds=2 if quick else 4, seconds=8.0 if quick else 10.0,
                                 max_tokens=24 if quick else 48)  # fmt: skip
    except BackendStartError as exc:
        print(f"(skipping bench.batching: {exc})")
