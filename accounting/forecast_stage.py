"""The forecast's place in the proxy: a refitting :class:`Forecaster` and a stage.

The component fits :mod:`accounting.forecast` on the ledger at start-up and then
in the background, every ``refit_rows`` requests finished or every ``refit_s``
seconds, whichever comes first. The ledger is read on its own reader thread and
the fit runs in a worker thread, so neither blocks a request; a request uses the
fit it finds (:attr:`Forecaster.current`, replaced whole when a refit ends).

At admission the stage forecasts the request's energy from that fit, which is
arithmetic on a prompt-size approximation (no I/O, microseconds), and puts it in
``ex.forecast_energy_j``, the ``energy`` object (``forecast_energy_j``, null when
there is no forecast) and the ``x-energy-forecast-j`` header. The ledger row keeps
it, so ``joulegate report`` can say how far off the forecasts were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from accounting.forecast import SAMPLE_SQL, FitSet, Prediction, fit_samples, sample_from_sql
from accounting.ledger_stage import Accounting
from accounting.ledgers import AnyLedger
from config.errors import LedgerError
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage

log = logging.getLogger("joulegate.forecast")

CHARS_PER_TOKEN = 4.0
"""The prompt-size approximation: about four characters a token for English text."""
TOKENS_PER_MESSAGE = 4
"""What a chat template adds around each message (role markers, separators)."""
_TEXT_FIELDS = ("prompt", "input", "instructions", "system", "suffix")
_MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _chars(value: Any) -> tuple[int, int]:
    """Characters of text in a body field and the messages in it."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        chars = messages = 0
        for item in value:
            if isinstance(item, dict):
                messages += "role" in item
                for key in ("content", "text"):
                    c, m = _chars(item.get(key))
                    chars, messages = chars + c, messages + m
            else:
                c, m = _chars(item)
                chars, messages = chars + c, messages + m
        return chars, messages
    return 0, 0


def approx_prompt_tokens(body: Mapping[str, Any] | None) -> int:
    """The prompt's tokens, approximated from its characters (no tokenizer)."""
    if not body:
        return 0
    chars, messages = _chars(body.get("messages"))
    for name in _TEXT_FIELDS:
        c, m = _chars(body.get(name))
        chars, messages = chars + c, messages + m
    return int(-(-chars // CHARS_PER_TOKEN)) + TOKENS_PER_MESSAGE * messages


def max_tokens_of(body: Mapping[str, Any] | None) -> int | None:
    """The request's output cap (``max_tokens`` and its newer names, Ollama's
    ``options.num_predict``); None when it sets none."""
    if not body:
        return None
    options = body.get("options")
    ollama = options.get("num_predict") if isinstance(options, dict) else None
    for value in (*(body.get(k) for k in _MAX_TOKEN_FIELDS), ollama):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class Forecaster:
    """The current fit over the ledger, and the loop that refits it."""

    def __init__(
        self, ledger: AnyLedger, *, refit_rows: int = 200, refit_s: float = 600.0,
        max_rows: int = 200_000,
    ) -> None:  # fmt: skip
        self._ledger = ledger
        self._refit_rows = refit_rows
        self._refit_s = refit_s
        self._max_rows = max_rows
        self._new_rows = 0
        self._due = asyncio.Event()
        self.current = FitSet()
        """The fit requests use now; replaced whole, never changed in place."""

    def predict(self, model: str, task: str | None, body: Mapping[str, Any] | None) -> Prediction:
        """The forecast for a request body to ``model`` (arithmetic only)."""
        return self.current.predict(model, task, approx_prompt_tokens(body), max_tokens_of(body))

    def note_finished(self) -> None:
        """A request finished: refit once ``refit_rows`` of them have."""
        self._new_rows += 1
        if self._new_rows >= self._refit_rows:
            self._due.set()

    async def refit(self) -> FitSet:
        """Read the completed rows and fit them in a worker thread."""
        self._new_rows = 0
        rows = await self._ledger.fetchall(
            SAMPLE_SQL + " ORDER BY id DESC LIMIT ?", [self._max_rows]
        )
        self.current = await asyncio.to_thread(_fit_rows, rows)
        return self.current

    async def run(self) -> None:
        """Refit whenever due, until cancelled; failures are logged, never raised."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._refit_s)
            self._due.clear()
            try:
                fit = await self.refit()
                log.debug("forecast refitted on %d rows", fit.rows)
            except LedgerError as exc:
                log.warning("could not refit the forecast: %s", exc)
            except Exception:
                log.exception("refitting the forecast failed")


def _fit_rows(rows: Sequence[Sequence[object]]) -> FitSet:
    return fit_samples(sample_from_sql(r) for r in rows)


class ForecastStage(Stage):
    """Forecasts each gated request's energy at admission."""

    name = "forecast"

    def __init__(self, forecaster: Forecaster) -> None:
        self._f = forecaster

    async def on_admitted(self, ex: Exchange) -> None:
        """Put the forecast on the exchange (rendered in the ``energy`` object and a header)."""
        if not ex.gated:
            return
        energy = None
        if ex.model_requested is not None:
            energy = self._f.predict(ex.model_requested, ex.task, ex.body).energy_j
        ex.forecast_made = True
        ex.forecast_energy_j = None if energy is None else energy.p50

    async def on_closed(self, ex: Exchange) -> None:
        """Count the request towards the next refit (closed: its row is committed by now)."""
        if ex.gated and ex.window.admitted_s is not None:
            self._f.note_finished()


def forecast_component(
    *, refit_rows: int = 200, refit_s: float = 600.0, max_rows: int = 200_000
) -> Component:
    """The forecast component; the forecaster is published (``ctx.get(Forecaster)``)."""

    @contextlib.asynccontextmanager
    async def component(ctx: AppContext) -> AsyncIterator[Stage]:
        acc = ctx.require(Accounting, by="forecast")
        forecaster = Forecaster(
            acc.ledger, refit_rows=refit_rows, refit_s=refit_s, max_rows=max_rows
        )
        try:
            fit = await forecaster.refit()
            log.info("forecast fitted on %d ledger rows (%d models)", fit.rows, len(fit.fits))
        except LedgerError as exc:
            log.warning("no forecast until the ledger can be read: %s", exc)
        ctx.publish(forecaster)
        task = asyncio.create_task(forecaster.run(), name="forecast-refit")
        try:
            yield ForecastStage(forecaster)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            ctx.withdraw(Forecaster)

    return component
