"""The Playground's data: models and tasks, the forecast, and a prompt's live answer.

``POST api/chat`` answers with the console's own event stream (``text/event-stream``):

``queue``  ``{position, in_flight, waiting}`` while the prompt waits for a slot
``start``  ``{request_id, status}`` when joulegate starts answering
``delta``  ``{text}`` each piece of the model's text as it arrives
``tick``   ``{elapsed_s, power_w}`` twice a second: time since sending, power now
``done``   ``{energy, row}``: the ``energy`` object joulegate put on the stream and
           the request's ledger row (committed before the stream's last byte)
``error``  ``{status, message}`` a refusal (401, 429, 400) or a backend error

The model's text is data: the page shows it with ``textContent``, never as HTML.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.response import Stream

from accounting.auth import ANONYMOUS, Identity
from accounting.ledger.rows import row_from_sql
from accounting.ledger.stage import Accounting
from config.errors import BadRequest, RateLimited, Unauthorized
from proxy.console.guard import Viewer, check_post, viewer
from proxy.console.inprocess import calling, headers_of, scope_for, whole
from proxy.context import AppContext, MachinePower
from proxy.gate import waiting_on
from proxy.task import BUNDLED_TASKS, is_task_name

MAX_PROMPT_CHARS = 32_000
TICK_S = 0.5


def total_power_w(power: Mapping[str, float | None]) -> float | None:
    """The machine's power from the components' (``machine`` and ``psys`` hold the
    rest; else the parts add up)."""
    for whole_machine in ("machine", "psys"):
        if power.get(whole_machine) is not None:
            return power[whole_machine]
    parts = [w for c, w in power.items() if c in ("gpu", "cpu", "dram") and w is not None]
    return sum(parts) if parts else None


def _prompt_of(raw: Any, max_tokens_cap: int | None) -> tuple[str, str, str | None, int]:
    """``(model, prompt, task, max_tokens)`` from the page's JSON, or 400."""
    if not isinstance(raw, dict):
        raise BadRequest("send a JSON object")
    model, prompt, task = raw.get("model"), raw.get("prompt"), raw.get("task") or None
    if not isinstance(model, str) or not model:
        raise BadRequest("choose a model", param="model")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("type a prompt", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompts are at most {MAX_PROMPT_CHARS} characters", param="prompt")
    if task is not None and (not isinstance(task, str) or not is_task_name(task)):
        raise BadRequest("a task is 1 to 40 of a-z, 0-9, '_' and '-' (e.g. code)", param="task")
    cap = raw.get("max_tokens", 128)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise BadRequest("max_tokens must be an integer of at least 1", param="max_tokens")
    if max_tokens_cap is not None and cap > max_tokens_cap:
        raise BadRequest(
            f"max_tokens is at most {max_tokens_cap} in the public playground",
            param="max_tokens",
        )
    return model, prompt, task, cap


def _prompter(seen: Viewer) -> tuple[Identity, int | None, bool]:
    """Who a prompt is recorded for, its ``max_tokens`` cap, and whether the public
    playground's per-address limit applies (401 for a visitor who must sign in)."""
    cfg = seen.state.settings
    if seen.who is not None and seen.who.key_prefix is not None:
        return seen.who, None, False  # signed in with a key
    if seen.who is None and not cfg.public:
        raise Unauthorized("sign in to use the playground", code="not_signed_in")
    if not cfg.public:
        return seen.who or ANONYMOUS, None, False  # open or trust mode: as the /v1 routes
    return seen.who or ANONYMOUS, cfg.public_max_tokens, True


def _take_limit(request: Request[Any, Any, Any], seen: Viewer) -> None:
    """Count a public prompt against its client address: 429 with ``Retry-After`` beyond."""
    cfg = seen.state.settings
    address = request.client.host if request.client else "unknown"
    wait_s = seen.state.limit.take(address)
    if wait_s is not None:
        raise RateLimited(
            f"the public playground takes {cfg.public_requests_per_minute} prompts a minute"
            " from one address; wait and try again",
            code="rate_limited",
            headers={"retry-after": str(int(wait_s))},
        )


def _headers_for(who: Identity, seen: Viewer, task: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if task is not None:
        headers.append((b"x-joulegate-task", task.encode()))
    if seen.mode == "keys":
        ticket = seen.state.sessions.ticket(who)
        headers.append((b"authorization", f"Bearer {ticket}".encode()))
    elif seen.mode == "trust" and seen.acc is not None and who.user != "anonymous":
        name = seen.acc.settings.auth.user_header.lower().encode()
        headers.append((name, who.user.encode()))
    return headers


@get("/api/models", media_type=MediaType.JSON)
async def models(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """The served models and the bundled tasks, for the Playground's menus."""
    seen = await viewer(request, ctx)
    return seen.keep(Response({"models": sorted(ctx.router.models), "tasks": list(BUNDLED_TASKS)}))


@post("/api/forecast", media_type=MediaType.JSON, status_code=200)
async def forecast(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Any:
    """What the prompt would cost (joulegate's ``/v1/energy/forecast``), or why not."""
    seen = await viewer(request, ctx)
    check_post(request, seen)
    model, prompt, task, cap = _prompt_of(await request.json(), None)
    who = seen.who if seen.who is not None else ANONYMOUS
    if seen.who is None and not seen.state.settings.public:
        raise Unauthorized("sign in to use the playground", code="not_signed_in")
    body = {"model": model, "max_tokens": cap,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    scope = scope_for("/v1/energy/forecast", _headers_for(who, seen, task), _client(request))
    status, answer = await whole(request.app, scope, json.dumps(body).encode())
    return Response(answer, status_code=status)


@get("/api/queue", media_type=MediaType.JSON, sync_to_thread=False)
def queue(ctx: NamedDependency[AppContext]) -> dict[str, Any]:
    """The gateway now: requests holding a slot on any machine, and waiting for one (a
    request queued on several machines once)."""
    gates = [m.gate for m in ctx.machines.machines]
    return {"in_flight": sum(g.in_flight for g in gates), "waiting": waiting_on(gates)}


@post("/api/chat", media_type="text/event-stream", status_code=200)
async def chat(request: Request[Any, Any, Any], ctx: NamedDependency[AppContext]) -> Stream:
    """Send the prompt through joulegate; stream what happens (see the module doc)."""
    seen = await viewer(request, ctx)
    check_post(request, seen)
    raw = await request.json()
    who, cap, limited = _prompter(seen)
    model, prompt, task, max_tokens = _prompt_of(raw, cap)
    if limited:  # counted once the prompt is well formed: a typo costs no turn
        _take_limit(request, seen)
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": prompt}],
    }
    scope = scope_for("/v1/chat/completions", _headers_for(who, seen, task), _client(request))
    events = _events(request, ctx, scope, json.dumps(body).encode())
    return Stream(events, headers={"x-accel-buffering": "no"})


def _client(request: Request[Any, Any, Any]) -> tuple[str, int] | None:
    c = request.client
    return (c.host, c.port) if c is not None else None


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(
    request: Request[Any, Any, Any], ctx: AppContext, scope: dict[str, Any], body: bytes
) -> AsyncIterator[bytes]:
    start_s = time.monotonic()
    gates = [m.gate for m in ctx.machines.machines]
    position = waiting_on(gates) + (0 if any(g.free for g in gates) else 1)
    request_id, status, energy, machine = None, 0, None, None
    buffer, error_body = b"", b""
    next_tick_s = start_s + TICK_S
    async with calling(request.app, scope, body) as call:
        while True:
            try:
                # Ticks keep their pace while the answer streams: a wait for the next
                # message that only timed out never ticked under a fast model.
                wait_s = max(0.0, next_tick_s - time.monotonic())
                message = await asyncio.wait_for(call.messages.get(), wait_s)
            except TimeoutError:
                next_tick_s = time.monotonic() + TICK_S
                if request_id is None:  # the gateway's queue: every machine's, each once
                    waiting = waiting_on(gates)
                    position = min(position, waiting)
                    in_flight = sum(g.in_flight for g in gates)
                    yield _event("queue", {"position": position, "in_flight": in_flight,
                                           "waiting": waiting})  # fmt: skip
                else:
                    yield await _tick(ctx, start_s, machine)
                continue
            if message["type"] == "http.response.start":
                status = message["status"]
                head = headers_of(message)
                request_id, machine = head.get("x-request-id"), head.get("x-joulegate-machine")
                yield _event("start", {"request_id": request_id, "status": status})
                continue
            if message["type"] != "http.response.body":
                continue
            chunk = message.get("body", b"")
            if status >= 400:
                error_body += chunk
            else:
                buffer += chunk
                *blocks, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
                for block in blocks:
                    text, found = _read_block(block)
                    energy = found or energy
                    if text:
                        yield _event("delta", {"text": text})
            if not message.get("more_body", False):
                break
    if status >= 400:
        yield _event("error", {"status": status, "message": _message_of(error_body)})
        return
    yield _event("done", {"energy": energy, "row": await _row(ctx, request_id)})


async def _tick(ctx: AppContext, start_s: float, machine: str | None) -> bytes:
    """Elapsed time and the power of the machine serving the answer (read in a worker
    thread: a sampler read may wait on its lock)."""
    power: Mapping[str, float | None] = {}
    if (published := ctx.get(MachinePower)) is not None:
        readings = published.by_machine.get(machine or "") or published.first
        if readings is not None:
            power = await asyncio.to_thread(readings.power_w, 1.0)
    return _event("tick", {"elapsed_s": round(time.monotonic() - start_s, 3),
                           "power_w": total_power_w(power)})  # fmt: skip


def _read_block(block: bytes) -> tuple[str, dict[str, Any] | None]:
    """The text and the ``energy`` object (if any) of one SSE event of the proxy's stream."""
    text, energy = "", None
    for line in block.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if isinstance(chunk.get("energy"), dict):
            energy = chunk["energy"]
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if isinstance(piece, str):
                text += piece
    return text, energy


def _message_of(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:300].decode("utf-8", "replace") or "joulegate refused the prompt"


async def _row(ctx: AppContext, request_id: str | None) -> dict[str, Any] | None:
    """The request's ledger row (None without a ledger)."""
    from_ledger = ctx.get(Accounting)
    if from_ledger is None or request_id is None:
        return None
    rows = await from_ledger.ledger.fetchall(
        "SELECT * FROM requests WHERE request_id = ?", [request_id]
    )
    if not rows:
        return None
    out: dict[str, Any] = msgspec.to_builtins(row_from_sql(rows[0]))
    return out


def route_handlers() -> list[Any]:
    """The Playground's handlers (under the console's path)."""
    return [models, forecast, queue, chat]
