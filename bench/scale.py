"""In front of a GPU batching server: 8 to 512 concurrent streams, and 256 whole answers.

``python -m bench scale [--quick] [--streams=8,64]`` serves the fake backend paced like
a batching server (:class:`bench.fake.Pacer`: one decode step for every request every
20 ms, a token each) and, in one run, for 8, 64, 256 and 512 concurrent streams of 100
tokens, drives:

* **direct**: the backend itself;
* **bare**: the bare aiohttp forwarder (:mod:`bench.bare`) with an unlimited pool;
* **joulegate**: every default stage, ``max_concurrency`` = the number of streams;
* **LiteLLM** at 64 streams, as a reference line, when its proxy is installed.

Each target runs in its own process (uvicorn, uvloop); the clients run here, each stream
on a connection of its own, stream after stream. Their first requests are spread over
one stream's length (2 s), so the crowd is steady rather than waves that all finish in
the same decode step; then events are counted for the run's time. For each target: SSE
events per second delivered to the clients (offered: streams x 50), the target's own CPU
(user + system, from ``/proc``) per event delivered, and the same less what it spends
idle in as long (its sampler and timers: a fixed cost a second, which weighs on a few
streams' events and not on many), stream duration p50/p99 and failures (not 200, cut
short, or fewer events than sent). The second table is 256 concurrent clients asking
whole (non-streamed) answers back to back: answers per second against direct's. The
load average is printed beside each run: the machine is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.batching import cpu_s
from bench.overhead import pct
from bench.serve import spawn_process

TOKENS = 100
INTERVAL_MS = 20
STREAMS = (8, 64, 256, 512)
WHOLE = 256


@dataclass
class Run:
    """What the clients saw of one target."""

    window: tuple[float, float] = (0.0, 0.0)
    """What is counted: from, to (``time.perf_counter``)."""
    events: int = 0
    answers: int = 0
    """Requests answered whole inside the window."""
    durations_s: list[float] = field(default_factory=list)
    failures: int = 0
    wall_s: float = 0.0
    cpu_s: float | None = None
    idle_us_per_s: float = 0.0
    """The target's CPU while idle (its sampler, its timers), a second."""

    @property
    def events_per_s(self) -> float:
        """Events delivered per second of the run."""
        return self.events / self.wall_s if self.wall_s else 0.0

    def cpu_us_per(self, count: int) -> str:
        """The target's CPU per ``count`` (events or answers), in microseconds, and
        the same less what it spends idle."""
        if self.cpu_s is None or not count:
            return "- | -"
        net_s = self.cpu_s - self.idle_us_per_s * 1e-6 * self.wall_s
        return f"{self.cpu_s / count * 1e6:,.0f} | {net_s / count * 1e6:,.0f}"


def _request(port: int, stream: bool) -> bytes:
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}],
         "max_tokens": TOKENS, "stream": stream}
    ).encode()  # fmt: skip
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"x-fake-token-interval-ms: {INTERVAL_MS}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _one(port: int, request: bytes, stream: bool, run: Run) -> None:
    """One request on a connection of its own, read to its end; SSE events counted
    as they arrive inside the run's window."""
    t = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        run.failures += 1
        return
    events, carry, first = 0, b"", b""
    try:
        writer.write(request)
        while data := await reader.read(65536):
            if len(first) < 16:
                first += data[:16]
            n = (carry + data).count(b"data: ")
            carry = data[-5:]
            events += n
            if run.window[0] <= time.perf_counter() <= run.window[1]:
                run.events += n
    except OSError:
        first = b""
    finally:
        writer.close()
    if first.startswith(b"HTTP/1.1 200") and (not stream or events >= TOKENS + 2):
        done = time.perf_counter()
        run.durations_s.append(done - t)
        run.answers += run.window[0] <= done <= run.window[1]
    else:
        run.failures += 1


async def drive(url: str, clients: int, seconds: float, stream: bool, pid: int | None) -> Run:
    """``clients`` clients asking back to back, their first requests spread over one
    request's length (a steady crowd, not waves that all finish in the same decode
    step); what arrives in the ``seconds`` after that is counted, then the requests
    still running are dropped. ``pid``'s CPU is read over the same window."""
    port = int(url.rsplit(":", 1)[1])
    request = _request(port, stream)
    spread_s = TOKENS * INTERVAL_MS / 1000
    t0 = time.perf_counter()
    run = Run(window=(t0 + spread_s + 0.5, t0 + spread_s + 0.5 + seconds))

    async def client(i: int) -> None:
        await asyncio.sleep(spread_s * i / clients)
        while True:
            await _one(port, request, stream, run)

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(run.window[0] - time.perf_counter())
    before = cpu_s(pid) if pid is not None else 0.0
    await asyncio.sleep(run.window[1] - time.perf_counter())
    if pid is not None:
        run.cpu_s = cpu_s(pid) - before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    run.wall_s = run.window[1] - run.window[0]
    await asyncio.sleep(0.5)  # let the target see the dropped requests go
    return run


async def idle_cpu_us_per_s(pid: int, seconds: float = 2.0) -> float:
    """``pid``'s CPU while nothing is asked of it (its sampler and timers), per second."""
    before = cpu_s(pid)
    await asyncio.sleep(seconds)
    return (cpu_s(pid) - before) / seconds * 1e6


@contextlib.contextmanager
def _litellm(backend: str) -> Iterator[tuple[str, int] | None]:
    """LiteLLM's proxy before ``backend``, if its proxy extra is installed."""
    # Not imported here: litellm fetches a price list from the internet on import.
    if importlib.util.find_spec("litellm") is None or importlib.util.find_spec("fastapi") is None:
        yield None
        return
    env = {"OPENAI_API_KEY": "none", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    api = backend + "/v1"
    argv = ["litellm.proxy.proxy_cli", "--model", "openai/m", "--api_base", api, "--port", "PORT"]
    with spawn_process(argv, env) as target:
        yield target


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _row(streams: int, name: str, r: Run, direct: Run, load: str) -> str:
    p50 = f"{pct(r.durations_s, 50):.2f}" if r.durations_s else "-"
    p99 = f"{pct(r.durations_s, 99):.2f}" if r.durations_s else "-"
    share = r.events_per_s / direct.events_per_s if direct.events_per_s else 0.0
    return (
        f"| {streams} | {name} | {r.events_per_s:,.0f} ({streams * 1000 // INTERVAL_MS:,}) "
        f"| {share:.1%} | {r.cpu_us_per(r.events)} | {p50} | {p99} | {r.failures} | {load} |"
    )


async def main() -> None:
    """Print the streams table and the whole-answers table."""
    quick = "--quick" in sys.argv
    seconds = 4.0 if quick else 8.0
    chosen = next((a[10:] for a in sys.argv if a.startswith("--streams=")), "")
    counts = [int(x) for x in chosen.split(",") if x] or list(STREAMS)
    print(f"\n### Streams of {TOKENS} tokens at {INTERVAL_MS} ms, {seconds:.0f} s a run\n")
    print("| streams | target | events/s (offered) | of direct | CPU us/event | less idle "
          "| p50 s | p99 s | failures | load (1/5/15 min) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    whole: dict[str, Run] = {}
    with (
        spawn_process(["bench.serve", "fake", "PORT"], {}) as (backend, _),
        spawn_process(["bench.serve", "bare", "PORT", backend, "0"], {}) as (bare, bare_pid),
    ):
        for streams in counts:
            env = {"JOULEGATE_MAX_CONCURRENCY": str(streams),
                   "JOULEGATE_MAX_QUEUE": str(max(256, 2 * streams))}  # fmt: skip
            with spawn_process(["bench.serve", "full", "PORT", backend], env) as (jg, jg_pid):
                jg_idle = await idle_cpu_us_per_s(jg_pid)
                bare_idle = await idle_cpu_us_per_s(bare_pid)
                await drive(jg, min(streams, 8), 1.0, True, None)  # warm up
                direct = await drive(backend, streams, seconds, True, None)
                print(_row(streams, "direct", direct, direct, _load()), flush=True)
                r = await drive(bare, streams, seconds, True, bare_pid)
                r.idle_us_per_s = bare_idle
                print(_row(streams, "bare aiohttp", r, direct, _load()), flush=True)
                r = await drive(jg, streams, seconds, True, jg_pid)
                r.idle_us_per_s = jg_idle
                print(_row(streams, "joulegate", r, direct, _load()), flush=True)
                print(f"| | idle CPU: joulegate {jg_idle:,.0f} us/s, bare {bare_idle:,.0f} us/s |")
                if streams == 64:
                    with _litellm(backend) as lite:
                        if lite is None:
                            print("| 64 | LiteLLM | (its proxy is not installed) ||||||||")
                        else:
                            r = await drive(lite[0], streams, seconds, True, lite[1])
                            r.idle_us_per_s = await idle_cpu_us_per_s(lite[1])
                            print(_row(streams, "LiteLLM", r, direct, _load()), flush=True)
                if streams == WHOLE:
                    whole["direct"] = await drive(backend, WHOLE, seconds, False, None)
                    whole["bare aiohttp"] = await drive(bare, WHOLE, seconds, False, bare_pid)
                    whole["joulegate"] = await drive(jg, WHOLE, seconds, False, jg_pid)
                    whole["bare aiohttp"].idle_us_per_s = bare_idle
                    whole["joulegate"].idle_us_per_s = jg_idle
    print(f"\n### {WHOLE} concurrent whole (non-streamed) answers of {TOKENS} tokens\n")
    print("| target | answers/s | of direct | CPU us/answer | less idle | p50 s | p99 s "
          "| failures |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in whole.items():
        answers = r.answers
        rate = answers / r.wall_s if r.wall_s else 0.0
        base = whole["direct"].answers / whole["direct"].wall_s or 1.0
        p50 = f"{pct(r.durations_s, 50):.2f}" if r.durations_s else "-"
        p99 = f"{pct(r.durations_s, 99):.2f}" if r.durations_s else "-"
        print(f"| {name} | {rate:,.1f} | {rate / base:.1%} | {r.cpu_us_per(answers)} "
              f"| {p50} | {p99} | {r.failures} |")  # fmt: skip
