"""The ledger's two pipeline components: identify and budget-check, then record.

:func:`auth_component` runs early (right after telemetry): it identifies the
caller (401 in ``keys`` mode without a good key) and refuses a user over
budget (429) before the request queues. :func:`record_component` runs last,
after the meters and carbon stages have filled the exchange: its
``on_finished`` commits the request's row before the last byte is sent.

Both share one :class:`Accounting` (ledger, keys, budgets) published as
``ctx.get(Accounting)`` for the report endpoints; whichever component is
entered first opens it and closes it when it exits.

What is recorded: every gated request that passed ``on_arrival``, completed
or not (the backend's own errors as ``backend_error``, timeouts, clients that
left, even while queued: the ``failure`` column says why). Not recorded:
requests refused at arrival (401, 429, and 503 ``ledger_unavailable`` while
``ledger.require_durable`` finds no durable place for a row) and those refused
with 503 because the queue was full; they never reach the backend. Nor are non-inference requests
(``GET /v1/models``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from accounting.auth import Authenticator, KeyStore
from accounting.budgets import BudgetBook
from accounting.forecast.calibration import APPROX_PARAM, approx_prompt_tokens
from accounting.ledger import Ledger, ledger_from_settings
from accounting.ledger.rows import LedgerRow, iso, utcnow
from config import Settings
from config.errors import LedgerError, LedgerUnavailable
from proxy.context import AppContext, ClientAuth
from proxy.exchange import Exchange, Stage
from proxy.figures import figures_of

log = logging.getLogger("joulegate.ledger")

_CONTENT_FIELDS = ("messages", "prompt", "input", "instructions", "suffix")


@dataclass
class Accounting:
    """The ledger and what lives in it, shared by the stages and the report endpoints."""

    settings: Settings
    ledger: Ledger
    keys: KeyStore
    budgets: BudgetBook
    auth: Authenticator
    host: str
    """This joulegate's name in the ``host`` column: ``ledger.node_name`` or the hostname."""

    @classmethod
    async def open(cls, settings: Settings, *, serving: bool = True) -> Accounting:
        """Open the ledger and load keys and budgets."""
        host = settings.ledger.node_name or socket.gethostname()
        ledger = ledger_from_settings(settings.ledger)
        await ledger.open(serving=serving)
        try:
            keys = KeyStore(ledger, unknown_ttl_s=settings.auth.refresh_s)
            await keys.load()
            budgets = BudgetBook(ledger, host=host)
            await budgets.load()
        except BaseException:
            await ledger.close()
            raise
        auth = Authenticator(settings.auth, keys, budgets.has)
        return cls(settings, ledger, keys, budgets, auth, host)

    async def refresh_forever(self) -> None:
        """Pick up keys and budgets the CLI or another host changed (``data_version``)."""
        seen = await self.ledger.data_version()
        while True:
            await asyncio.sleep(self.settings.auth.refresh_s)
            try:
                version = await self.ledger.data_version()
                if version != seen:
                    seen = version
                    await self.keys.load()
                    await self.budgets.load_budgets()
            except LedgerError as exc:
                log.warning("could not refresh keys and budgets: %s", exc)

    async def refresh_spending_forever(self) -> None:
        """Re-read other hosts' spending every ``budgets.refresh_s`` (a shared ledger)."""
        while True:
            await asyncio.sleep(self.settings.budgets.refresh_s)
            try:
                await self.budgets.refresh()
            except LedgerError as exc:
                log.warning("could not refresh budget spending: %s", exc)
            except Exception:
                log.exception("refreshing budget spending failed")


@contextlib.asynccontextmanager
async def accounting_resource(ctx: AppContext) -> AsyncIterator[None]:
    """The app's :class:`Accounting` (ledger, keys, budgets), a resource the
    composition root opens before the stages that use it (auth, forecast, record)."""
    acc = await Accounting.open(ctx.settings)
    ctx.publish(acc)
    ctx.ready_checks.append(acc.ledger.health)
    refreshers = [
        asyncio.create_task(acc.refresh_forever(), name="accounting-refresh"),
        asyncio.create_task(acc.refresh_spending_forever(), name="budget-refresh"),
    ]
    log.info("ledger at %s; auth mode %s", acc.ledger.path, acc.auth.mode)
    if acc.auth.auto and acc.auth.mode == "open":
        log.info(
            "no API keys yet: everyone is 'anonymous' until one is created"
            " (joulegate keys create --user NAME --admin); keys mode starts then, no restart"
        )
    try:
        yield None
    finally:
        for task in refreshers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ctx.withdraw(Accounting)
        await acc.ledger.close()


class AuthStage(Stage):
    """Identifies the caller and refuses users over budget.

    The budget is checked twice: at arrival (a user already over it costs nothing and
    never queues) and again at admission, when the slot is granted, against totals
    that include every request finished so far. Requests queued behind each other
    therefore cannot all pass on the same stale total: the overshoot is at most the
    requests in flight at once (``max_concurrency``; one by default). Several hosts on
    one ledger see each other's spending ``budgets.refresh_s`` late, so there each
    host adds its in-flight requests and those it admits within that window.
    """

    name = "auth"

    def __init__(self, acc: Accounting) -> None:
        self._acc = acc

    async def on_arrival(self, ex: Exchange) -> None:
        """Set the user (or 401), then check their budget (or 429)."""
        who = await self._acc.auth.identify(ex.headers, ex.body)
        ex.user, ex.key_prefix, ex.is_admin = who.user, who.key_prefix, who.is_admin
        ex.user_known = who.known
        if ex.gated:
            self._check_budget(ex)

    async def on_admitted(self, ex: Exchange) -> None:
        """Check the budget again now that the request holds a slot (or 429)."""
        self._check_budget(ex)

    def _check_budget(self, ex: Exchange) -> None:
        now = utcnow()
        status = self._acc.budgets.status(ex.user, now)
        if status is None:
            return
        if status.exhausted:
            ex.scratch[self.name] = "refused"
            raise status.refusal(now)
        ex.response_headers.update(status.headers(now))


class RecordStage(Stage):
    """Commits each gated request's row before its last byte goes out."""

    name = "ledger"

    def __init__(self, acc: Accounting) -> None:
        self._acc = acc
        self._content = acc.settings.ledger.record_content
        self._require_durable = acc.settings.ledger.require_durable
        self.wants_content = self._content

    async def on_arrival(self, ex: Exchange) -> None:
        """With ``ledger.require_durable``, refuse (503) while no row could be kept."""
        ledger = self._acc.ledger
        if ex.gated and self._require_durable and not ledger.accepting_rows:
            raise LedgerUnavailable(
                "joulegate cannot record requests right now (neither its ledger nor the"
                " fallback file can be written); retry later",
                retry_after_s=self._acc.settings.ledger.retry_s,
            )

    async def on_finished(self, ex: Exchange) -> None:
        """Build the row from the exchange, count it against budgets, commit it before
        the answer's last byte."""
        if not ex.gated or ex.failure == "queue_full" or ex.scratch.get("auth") == "refused":
            return  # refused before reaching the backend: it used nothing
        row = row_from_exchange(ex, record_content=self._content, host=self._acc.host)
        budgets = self._acc.budgets
        budgets.add(row)
        if "x-energy-budget-reset" in ex.response_headers:  # the user has a budget
            status = budgets.status(ex.user)
            if status is not None:  # what is left after this request, for a whole answer
                ex.response_headers.update(status.remaining_headers())
        # Committed while the answer is rendered and sent; its last byte waits for it,
        # so a client that has the whole answer has its row (kill -9 loses nothing).
        ex.before_last_byte(self._acc.ledger.append_soon(row))


@contextlib.asynccontextmanager
async def auth_component(ctx: AppContext) -> AsyncIterator[Stage]:
    """Component: identify callers and check budgets (place it early)."""
    acc = ctx.require(Accounting, by="auth")
    if acc.auth.mode == "keys" or acc.auth.auto:  # auto: keys the moment a key exists
        # The client's jg- key never reaches the backend.
        ctx.publish(ClientAuth(acc.auth.strips_client_auth, acc.auth.guard_admin))
    yield AuthStage(acc)


@contextlib.asynccontextmanager
async def record_component(ctx: AppContext) -> AsyncIterator[Stage]:
    """Component: record every request in the ledger (place it last)."""
    yield RecordStage(ctx.require(Accounting, by="the ledger's record stage"))


def row_from_exchange(
    ex: Exchange, *, record_content: bool = False, host: str | None = None
) -> LedgerRow:
    """The ledger row for a finished exchange, recorded by joulegate ``host``."""
    w = ex.window
    body = ex.body or {}
    params: dict[str, Any] = {
        k: v for k, v in body.items() if isinstance(v, int | float) and k not in _CONTENT_FIELDS
    }
    if isinstance(body.get("messages"), list):
        params["messages_count"] = len(body["messages"])
    if body:  # beside the backend's prompt_tokens: how the forecast learns to size prompts
        params[APPROX_PARAM] = approx_prompt_tokens(body)
    prompt = None
    if record_content:
        content = {k: body[k] for k in _CONTENT_FIELDS if k in body}
        prompt = json.dumps(content, ensure_ascii=False) if content else None
    finished = utcnow()
    if w.finished_s is not None:  # the window's clock is monotonic: shift by the lag since
        finished -= dt.timedelta(seconds=max(0.0, time.monotonic() - w.finished_s))
    return LedgerRow(
        request_id=ex.request_id,
        ts=iso(ex.arrived_at),
        finished_ts=iso(finished),
        user=ex.user,
        key_prefix=ex.key_prefix,
        endpoint=ex.endpoint,
        model_requested=ex.model_requested,
        model_served=ex.model_served,
        status=ex.status,
        stream=ex.stream,
        prompt_tokens=ex.prompt_tokens,
        completion_tokens=ex.completion_tokens,
        queue_s=w.queue_s,
        thermal_wait_s=w.thermal_wait_s,
        duration_s=w.duration_s,
        backend=ex.backend,
        task=ex.task,
        host=host,
        machine=ex.machine,
        trace_id=ex.trace_id,
        response_id=ex.response_id,
        failure=ex.failure or ("backend_error" if (ex.status or 0) >= 400 else None),
        finish_reason=ex.finish_reasons[-1] if ex.finish_reasons else None,
        request_params=params,
        prompt=prompt,
        response=ex.response_text if record_content else None,
        **figure_columns(ex),
    )


_COLUMNS = {
    r: tuple((f.attr, f.column) for f in figures_of(r) if f.column is not None)
    for r in ("measurement", "carbon", "forecast")
}


def figure_columns(ex: Exchange) -> dict[str, Any]:
    """The ledger columns of the exchange's figure records (:data:`proxy.figures.FIGURES`);
    a record its stage did not set leaves its columns at their defaults."""
    out: dict[str, Any] = {}
    for record, columns in _COLUMNS.items():
        value = getattr(ex, record)
        if value is not None:
            for attr, column in columns:
                out[column] = getattr(value, attr)
    return out
