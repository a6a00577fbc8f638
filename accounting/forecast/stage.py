"""The forecast's place in the proxy: a refitting :class:`Forecaster` and a stage.

The component fits :mod:`accounting.forecast.fit` on the ledger at start-up and then in
the background, once ``refit_rows`` requests have finished *and* the ledger has grown by
a tenth of the rows the fit was made on, or every ``refit_s`` seconds when any request
finished; never two background refits less than five seconds apart (nor closer than ten
times the last one's duration). Reading then costs each request about ten row reads
however big the ledger is (refitting every 200 requests on 200,000 rows cost each a
thousand, some 3 ms of CPU). A model whose history is small is refitted sooner: as soon
as it has the :data:`~accounting.forecast.MIN_FIT_ROWS` of a first fit, and after each
of its requests while it has fewer than :data:`SMALL_HISTORY_ROWS` (a bench of 22
requests once waited 11 minutes for its first forecast); on a ledger of more than
:data:`CHEAP_REFIT_ROWS` rows, where a refit costs a second, only when its rows double.
``POST /v1/energy/forecast`` for such a model first asks the ledger whether rows of it
were committed since the fit (:meth:`Forecaster.freshen`: the rows after the fit's last
id, a range read) and if so refits before answering, so a bench's last request is in the
next forecast even when that request's own bookkeeping has not run yet; admission never
waits. The ledger is read and the fit made in a worker thread (``fetch_converted``), so
neither blocks a request; a request uses the fit it finds (:attr:`Forecaster.current`,
replaced whole when a refit ends).

At admission the stage forecasts the request's energy from that fit, which is
arithmetic on a prompt-size approximation (no I/O, ~20 us under load) put in the tokens
the model's backend has been counting (:mod:`accounting.forecast.calibration`). (Made in the
loop's next turn instead, while the backend works, it delayed the backend's answer as
much: the benchmark's timestamps showed no gain.) It goes in ``ex.forecast`` (a
:class:`~proxy.figures.ForecastFigure`), the ``energy`` object (``forecast_energy_j``,
null when there is no forecast) and the ``x-energy-forecast-j`` header. The ledger row keeps
it, so ``joulegate report`` can say how far off the forecasts were.

With ``budgets.preflight`` the stage also refuses at arrival (429, code
``energy_budget_insufficient``, ``x-should-retry: false``) a request whose forecast
energy, the high end of its 80% interval, exceeds what is left of its user's energy
budget. It runs after the auth stage (which set ``ex.user``), so the check lives here
and the auth stage knows nothing of forecasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from accounting.budgets import BudgetBook
from accounting.forecast.calibration import (
    CALIBRATION_ROWS,
    CALIBRATION_SQL,
    PromptCalibration,
    approx_prompt_tokens,
    calibration_from_rows,
)
from accounting.forecast.fit import MIN_FIT_ROWS, SAMPLE_SQL, SAMPLE_WHERE, FitSet, Prediction
from accounting.forecast.rows import fit_rows
from accounting.ledger import Ledger
from accounting.ledger.stage import Accounting
from config.errors import BudgetExceeded, LedgerError
from config.units import J_PER_WH
from proxy.context import AppContext, Component
from proxy.exchange import Exchange, Stage
from proxy.figures import ForecastFigure

log = logging.getLogger("joulegate.forecast")

SMALL_HISTORY_ROWS = 200
"""A model with fewer completed rows than this in its fit is refitted after each request."""
CHEAP_REFIT_ROWS = 20_000
"""Above this many rows in the fit, a small history is refitted only when it doubles."""
NEWER_SQL = f"SELECT COUNT(*) FROM requests WHERE id > ? AND model_served = ? AND {SAMPLE_WHERE}"  # noqa: S608
"""A model's completed rows committed after a given id."""
MAX_ALIASES = 1024
"""Requested → served names remembered at most (requested names are the clients')."""
SERVED_SQL = (
    "SELECT model_requested, model_served, MAX(id) AS last FROM requests"
    " WHERE id > (SELECT COALESCE(MAX(id), 0) FROM requests) - ?"
    " AND failure IS NULL AND status < 400 AND model_requested IS NOT NULL"
    " AND model_served IS NOT NULL AND model_requested <> model_served"
    " GROUP BY model_requested, model_served ORDER BY last"
)
"""The aliases among the latest rows (by id), oldest first so that the latest wins."""
_MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


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


REFIT_GROWTH = 0.1
"""A refit waits for the ledger to grow by this fraction of the rows of the last fit."""
REFIT_PAUSE_S = 5.0
"""The background refits are at least this far apart (a refit due sooner waits)."""
REFIT_COST_SHARE = 0.1
"""The most of the time background refits may take: one that took ``t`` seconds is
followed by a pause of ``t / REFIT_COST_SHARE`` at least."""


class Forecaster:
    """The current fit over the ledger, and the loop that refits it."""

    def __init__(
        self, ledger: Ledger, *, refit_rows: int = 200, refit_s: float = 600.0,
        max_rows: int = 200_000,
    ) -> None:  # fmt: skip
        self._ledger = ledger
        self._refit_rows = refit_rows
        self._refit_s = refit_s
        self._max_rows = max_rows
        self._new_rows = 0
        self._due = asyncio.Event()
        self._pending: dict[str, int] = {}
        """Model → its requests finished since the last refit began."""
        self._upto_id = 0
        """The ledger's last row id when the current fit began reading."""
        self._refitting = asyncio.Lock()
        self.current = FitSet()
        """The fit requests use now; replaced whole, never changed in place."""
        self.served: dict[str, str] = {}
        """Requested model name → the name the backend answered under, where they differ
        (an alias): fits are keyed by the served name, which the ledger records."""
        self.prompt_size = PromptCalibration()
        """Each fitted model's prompt counts against the approximation (admission's size)."""

    def fitted_name(self, model: str) -> str:
        """The name ``model``'s fit is under: its own, else the name it was served as."""
        return model if self.current.fit_for(model) is not None else self.served.get(model, model)

    def predict(
        self, model: str, task: str | None, body: Mapping[str, Any] | None,
        prompt_tokens: int | None = None,
    ) -> Prediction:  # fmt: skip
        """The forecast for a request body to ``model`` (arithmetic only).

        ``model`` is the requested name; when it has no fit of its own but has been
        served under another name, the fit made under that name is used. The prompt's
        size is ``prompt_tokens`` when the caller counted them, else its approximation
        in the tokens that model's backend has been counting
        (:mod:`accounting.forecast.calibration`)."""
        model = self.fitted_name(model)
        if prompt_tokens is None:
            prompt_tokens = self.prompt_size.tokens(model, approx_prompt_tokens(body))
        return self.current.predict(model, task, prompt_tokens, max_tokens_of(body))

    def note_prompt(self, model: str | None, body: Mapping[str, Any] | None, counted: int) -> None:
        """The backend counted ``counted`` prompt tokens in ``body`` (its usage after a
        request, its tokenizer for a forecast): later admissions size prompts alike."""
        if model and body:
            self.prompt_size.note(self.fitted_name(model), approx_prompt_tokens(body), counted)

    def note_served(self, requested: str | None, served: str | None) -> None:
        """Remember the name a requested model was answered under (an alias)."""
        if requested and served and requested != served and len(self.served) < MAX_ALIASES:
            self.served[requested] = served

    async def load_served(self) -> int:
        """Learn the aliases the ledger's latest ``max_rows`` rows show (start-up: a
        restart forecasts them at once); the latest served name wins. How many are known."""
        for requested, served, _ in await self._ledger.fetchall(SERVED_SQL, [self._max_rows]):
            self.note_served(requested, served)
        return len(self.served)

    def note_finished(self, model: str | None = None) -> None:
        """A request finished (``model``: the name it was served as, when it completed):
        refit once ``refit_rows`` of them have and the rows grew by
        :data:`REFIT_GROWTH` of the fit's, or at once for a small history."""
        self._new_rows += 1
        if model is not None and len(self._pending) < MAX_ALIASES:
            pending = self._pending[model] = self._pending.get(model, 0) + 1
            if self._small_due(self.current.model_rows.get(model, 0), pending):
                self._due.set()
        if self._new_rows >= max(self._refit_rows, REFIT_GROWTH * self.current.rows):
            self._due.set()

    async def freshen(self, model: str) -> None:
        """Refit first when ``model`` (its fitted name) has a small history and the
        ledger has completed rows of it the fit lacks (for the forecast endpoint)."""
        if self.current.model_rows.get(model, 0) >= SMALL_HISTORY_ROWS:
            return
        async with self._refitting:  # a refit under way may already hold them
            newer = (await self._ledger.fetchall(NEWER_SQL, [self._upto_id, model]))[0][0]
            if self._small_due(self.current.model_rows.get(model, 0), int(newer)):
                await self._refit_locked()

    def _small_due(self, fitted: int, newer: int) -> bool:
        """Whether a model with ``fitted`` rows in the fit and ``newer`` since is owed a
        refit off the schedule: its first fit, or each new row of a small history (each
        doubling on a big ledger)."""
        if newer < 1 or fitted + newer < MIN_FIT_ROWS or fitted >= SMALL_HISTORY_ROWS:
            return False
        if fitted < MIN_FIT_ROWS or self.current.rows <= CHEAP_REFIT_ROWS:
            return True
        return fitted + newer >= 2 * fitted

    @property
    def refit_due(self) -> bool:
        """Whether enough requests finished since the last fit for the next one."""
        return self._due.is_set()

    async def refit(self) -> FitSet:
        """Read the completed rows and fit them in a worker thread."""
        async with self._refitting:
            return await self._refit_locked()

    async def _refit_locked(self) -> FitSet:
        self._new_rows = 0
        self._pending.clear()
        upto = (await self._ledger.fetchall("SELECT COALESCE(MAX(id), 0) FROM requests"))[0][0]
        self.current = await self._ledger.fetch_converted(
            SAMPLE_SQL + " ORDER BY id DESC LIMIT ?", [self._max_rows], fit_rows
        )
        self._upto_id = int(upto)
        return self.current

    async def load_calibration(self) -> None:
        """Learn how each model's backend sizes prompts from the ledger's latest rows
        (start-up: as ``joulegate forecast`` does, before any request is seen)."""
        rows = await self._ledger.fetchall(CALIBRATION_SQL, [CALIBRATION_ROWS])
        self.prompt_size = calibration_from_rows(rows)

    async def run(self) -> None:
        """Refit whenever due, until cancelled; failures are logged, never raised.

        Refits are paced (:data:`REFIT_PAUSE_S`, :data:`REFIT_COST_SHARE`): a small
        history is due after each request, and back to back at a few requests a second
        the refits were a quarter of the proxy's CPU at 8 concurrent streams. The
        requests finished meanwhile are all in the next refit; the forecast endpoint
        does not wait for the pace (:meth:`freshen`)."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._refit_s)
            self._due.clear()
            if not self._new_rows:
                continue  # nothing finished since the last fit: it would come out the same
            began = loop.time()
            try:
                fit = await self.refit()
                log.debug("forecast refitted on %d rows", fit.rows)
            except LedgerError as exc:
                log.warning("could not refit the forecast: %s", exc)
            except Exception:
                log.exception("refitting the forecast failed")
            took = loop.time() - began
            await asyncio.sleep(max(REFIT_PAUSE_S, took / REFIT_COST_SHARE) - took)


class ForecastStage(Stage):
    """Forecasts each gated request's energy at admission."""

    name = "forecast"

    def __init__(self, forecaster: Forecaster, budgets: BudgetBook | None = None) -> None:
        self._f = forecaster
        self._budgets = budgets
        """Set when ``budgets.preflight`` is on: the book to check forecasts against."""

    async def on_arrival(self, ex: Exchange) -> None:
        """With pre-flight budgets, refuse (429) a request its budget cannot cover."""
        if self._budgets is None or not ex.gated or ex.model_requested is None:
            return
        status = self._budgets.status(ex.user)
        remaining_j = None if status is None else status.remaining_energy_j
        if remaining_j is None:
            return
        prediction = self._f.predict(ex.model_requested, ex.task, ex.body)
        ex.scratch[self.name] = prediction  # on_admitted reuses it: the body is the same
        energy = prediction.energy_j
        if energy is not None and energy.high > remaining_j:
            raise BudgetExceeded(
                f"this request is forecast to use up to {energy.high / J_PER_WH:.4g} Wh"
                f" (80% interval high) but user {ex.user!r} has"
                f" {remaining_j / J_PER_WH:.4g} Wh of energy budget left",
                code="energy_budget_insufficient",
                headers={"x-should-retry": "false"},
            )

    async def on_admitted(self, ex: Exchange) -> None:
        """Put the forecast on the exchange (rendered in the ``energy`` object and a header):
        the one pre-flight made at arrival when there was one, else a new one."""
        if not ex.gated:
            return
        prediction = ex.scratch.pop(self.name, None)
        if not isinstance(prediction, Prediction) and ex.model_requested is not None:
            prediction = self._predicted(ex, ex.model_requested)
        energy = None if prediction is None else prediction.energy_j
        ex.forecast = ForecastFigure(None if energy is None else energy.p50)

    def _predicted(self, ex: Exchange, model: str) -> Prediction | None:
        """The forecast, or None (logged) should it fail: the request goes on without it."""
        try:
            return self._f.predict(model, ex.task, ex.body)
        except Exception:
            log.exception("forecasting %s failed", ex.request_id)
            return None

    async def on_closed(self, ex: Exchange) -> None:
        """Count the request towards the next refit (closed: its row is committed by now)."""
        if ex.gated and ex.window.admitted_s is not None:
            self._f.note_served(ex.model_requested, ex.model_served)
            completed = None
            if ex.failure is None and ex.prompt_tokens is not None:
                # Under the name the backend answered as: the fits are keyed by it.
                completed = ex.model_served or ex.model_requested
                self._f.note_prompt(completed, ex.body, ex.prompt_tokens)
            self._f.note_finished(completed)


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
            aliases = await forecaster.load_served()
            await forecaster.load_calibration()
            log.info("forecast fitted on %d ledger rows (%d models, %d aliases)",
                     fit.rows, len(fit.fits), aliases)  # fmt: skip
        except LedgerError as exc:
            log.warning("no forecast until the ledger can be read: %s", exc)
        ctx.publish(forecaster)
        task = asyncio.create_task(forecaster.run(), name="forecast-refit")
        try:
            preflight = ctx.settings.budgets.preflight
            yield ForecastStage(forecaster, acc.budgets if preflight else None)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            ctx.withdraw(Forecaster)

    return component
