"""What a request will cost, forecast from the ledger before it runs.

Per served model, on the ledger's completed rows, three linear fits::

    energy_j         ≈ a + b * prompt_tokens + c * completion_tokens
    energy_dynamic_j ≈ (the same form)
    duration_s       ≈ (the same form)

fitted robustly (:mod:`accounting.forecast.robust_fit`: Huber weights by iteratively
reweighted least squares, the scale re-estimated from the residuals' median
absolute deviation each round), so the odd row a thermal pause or a stalled
backend inflated barely moves the coefficients. Failed rows (``failure`` set)
are never used. Measured rows and estimated rows (``energy_estimated``) are
fitted apart; a forecast uses the measured fit when there is one and says which
it used.

Every coefficient is non-negative (:mod:`accounting.robust_fit`), so no forecast
falls with more tokens or below zero.

Output tokens are not known before the request runs: they are predicted as the
10th, 50th and 90th percentiles of what the same model produced for the same
task (every task when the request names none), conditioned on the request's
``max_tokens``. An answer that ended on its own (any ``finish_reason`` but
``length``) counts as its length, capped by the new ``max_tokens``; an answer
that hit its cap is known only to be at least that long, so under a larger
``max_tokens`` it is taken to run to the new cap (the history is *rescaled*:
``basis`` says ``rescaled task history`` and ``history_cap`` the smallest cap hit).
History learnt at ``max_tokens`` 64 thus no longer predicts 64 tokens for a
request at 128 from a model that fills its cap. The 80% interval of a figure is
the fit at the p10 and p90 token counts, widened by the p10 and p90 of the fit's
residuals taken as shares of the fitted values; it always holds the median, and
its low end is above zero whenever the model's measured figures are.

Everything here is pure computation on numpy arrays: the caller reads the rows
and runs :func:`fit_samples` in a thread (it never runs on the event loop).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from accounting.forecast.robust_fit import FloatArray, LinearFit, huber_fit
from accounting.ledger.rows import iso

MIN_FIT_ROWS = 8
"""Fewer completed rows than this and a model has no fit (three coefficients need slack)."""
MIN_TOKEN_ROWS = 3
"""Fewer than this and a (model, task) has no token history."""
ALL_TASKS = "*"
"""The token-history key of a model's rows over every task."""
BEYOND_CAP = 1e9
"""Stands for the unknown length of an answer that hit its cap (longer than any cap)."""

Basis = Literal["task history", "rescaled task history", "max_tokens cap", "no history"]


@dataclass(frozen=True, slots=True)
class TokenHistory:
    """A (model, task)'s output tokens: p10, p50 and p90 two ways."""

    observed: tuple[float, float, float]
    """As the answers came (one that hit its cap counts at that cap): for requests
    without ``max_tokens``."""
    open_ended: tuple[float, float, float]
    """With each answer that hit its cap at :data:`BEYOND_CAP`: for requests with a
    ``max_tokens``, which caps them."""
    smallest_cap_hit: float | None = None
    """The smallest cap an answer hit (None: every answer ended on its own)."""

    def at(self, max_tokens: int | None) -> tuple[tuple[float, float, float], bool]:
        """The percentiles for a request capped at ``max_tokens``, and whether answers
        that hit a smaller cap were taken to run to this one (rescaled)."""
        if max_tokens is None:
            return self.observed, False
        q = self.open_ended
        capped = (min(q[0], max_tokens), min(q[1], max_tokens), min(q[2], max_tokens))
        hit = self.smallest_cap_hit
        return capped, hit is not None and hit < max_tokens


def token_history(tokens: FloatArray, hit_cap: npt.NDArray[np.bool_]) -> TokenHistory:
    """The :class:`TokenHistory` of one group's completion tokens."""
    observed = np.quantile(tokens, [0.1, 0.5, 0.9])
    smallest = None
    open_ended = observed
    if bool(hit_cap.any()):
        smallest = float(tokens[hit_cap].min())
        open_ended = np.quantile(np.where(hit_cap, BEYOND_CAP, tokens), [0.1, 0.5, 0.9])
    o, e = (float(v) for v in observed), (float(v) for v in open_ended)
    return TokenHistory((next(o), next(o), next(o)), (next(e), next(e), next(e)), smallest)


@dataclass(frozen=True, slots=True)
class Sample:
    """One completed ledger row, as the fit reads it."""

    model: str
    task: str | None
    estimated: bool
    prompt_tokens: int
    completion_tokens: int
    energy_j: float
    energy_dynamic_j: float | None
    duration_s: float | None
    hit_cap: bool = False
    """The answer stopped at its ``max_tokens`` (``finish_reason`` ``length``)."""


@dataclass(frozen=True, slots=True)
class ModelFit:
    """One model's fits, on its measured rows or on its estimated ones."""

    model: str
    estimated: bool
    energy: LinearFit
    energy_dynamic: LinearFit | None
    duration: LinearFit | None
    fitted_at: str

    def describe(self) -> dict[str, object]:
        """The fit behind a forecast, as the API shows it."""
        e = self.energy
        return {
            "model": self.model,
            "rows": e.rows,
            "r2": round(e.r2, 4),
            "energy_j": {"a": e.a, "b_per_prompt_token": e.b, "c_per_completion_token": e.c},
            "fitted_at": self.fitted_at,
            "energy": "estimated" if self.estimated else "measured",
        }


@dataclass(frozen=True, slots=True)
class Interval:
    """A forecast figure: its median and its 80% interval."""

    p50: float
    low: float
    high: float

    def scaled(self, factor: float, offset: float = 0.0) -> Interval:
        """``factor * figure + offset`` (CO2e from energy)."""
        return Interval(self.p50 * factor + offset, self.low * factor + offset,
                        self.high * factor + offset)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Prediction:
    """A forecast for one request (figures None when ``basis`` is ``no history``)."""

    basis: Basis
    reason: str | None = None
    completion_tokens: Interval | None = None
    energy_j: Interval | None = None
    energy_dynamic_j: Interval | None = None
    duration_s: Interval | None = None
    fit: ModelFit | None = None
    history_cap: float | None = None
    """With ``rescaled task history``: the smallest cap the history's answers hit."""


@dataclass(frozen=True, slots=True)
class FitSet:
    """Every model's fit and token history at one moment; replaced whole on a refit."""

    fits: dict[tuple[str, bool], ModelFit] = field(default_factory=dict)
    tokens: dict[tuple[str, str], TokenHistory] = field(default_factory=dict)
    """(model, task or ``*``) → its completion tokens."""
    fitted_at: str | None = None
    rows: int = 0
    model_rows: dict[str, int] = field(default_factory=dict)
    """Model → the completed rows of it the fit read (those below the minimum too)."""

    def fit_for(self, model: str) -> ModelFit | None:
        """The measured fit of ``model``, else its estimated one."""
        return self.fits.get((model, False)) or self.fits.get((model, True))

    def predict(
        self, model: str, task: str | None, prompt_tokens: int, max_tokens: int | None
    ) -> Prediction:
        """The forecast for a request of ``prompt_tokens`` to ``model`` for ``task``."""
        fit = self.fit_for(model)
        if fit is None:
            return Prediction(
                "no history",
                f"the ledger has fewer than {MIN_FIT_ROWS} completed requests of {model!r}",
            )
        history = self.tokens.get((model, task or ALL_TASKS))
        basis: Basis = "task history"
        history_cap = None
        q: tuple[float, float, float]
        if history is None:
            if max_tokens is None:
                what = f"for task {task!r}" if task else "at all"
                return Prediction(
                    "no history",
                    f"no completed requests of {model!r} {what} and no max_tokens to cap",
                    fit=fit,
                )
            basis, q = "max_tokens cap", (max_tokens, max_tokens, max_tokens)
        else:
            q, rescaled = history.at(max_tokens)
            if rescaled:
                basis, history_cap = "rescaled task history", history.smallest_cap_hit
        tokens = Interval(q[1], q[0], q[2])

        def figure(lf: LinearFit | None) -> Interval | None:
            # The fit at the p10 and p90 tokens, widened by the residuals' p10 and p90 as
            # shares of the fitted value: noise grows with the request, and a low end
            # built on shares of a non-negative fit stays above zero (an absolute
            # residual took a 19 J request's interval down to [0, ...]). Ordered whatever
            # the fit's signs.
            if lf is None:
                return None
            ends = lf.at(prompt_tokens, q[0]), lf.at(prompt_tokens, q[2])
            return Interval(
                max(0.0, lf.at(prompt_tokens, q[1])),
                max(0.0, min(ends) * (1.0 + min(lf.relative_p10, 0.0))),
                max(0.0, max(ends) * (1.0 + max(lf.relative_p90, 0.0))),
            )

        return Prediction(
            basis,
            None,
            tokens,
            figure(fit.energy),
            figure(fit.energy_dynamic),
            figure(fit.duration),
            fit,
            history_cap,
        )


def _design(samples: Sequence[Sample]) -> FloatArray:
    n = len(samples)
    p = np.fromiter((s.prompt_tokens for s in samples), dtype=np.float64, count=n)
    c = np.fromiter((s.completion_tokens for s in samples), dtype=np.float64, count=n)
    return np.column_stack([np.ones_like(p), p, c])


def _fit_optional(x: FloatArray, values: FloatArray) -> LinearFit | None:
    """The fit of ``values`` (NaN where a row has none) on the design ``x``."""
    keep = ~np.isnan(values)
    kept = int(keep.sum())
    if kept < MIN_FIT_ROWS:
        return None
    return huber_fit(x, values) if kept == len(values) else huber_fit(x[keep], values[keep])


def _column(samples: Sequence[Sample], name: str) -> FloatArray:
    """One field of every sample as floats, None as NaN (one pass, no tuples)."""
    return np.fromiter(
        (np.nan if (v := getattr(s, name)) is None else v for s in samples),
        dtype=np.float64,
        count=len(samples),
    )


def fit_model(
    model: str, estimated: bool, samples: Sequence[Sample], fitted_at: str
) -> ModelFit | None:
    """The fits of one model on its rows (None below :data:`MIN_FIT_ROWS`)."""
    if len(samples) < MIN_FIT_ROWS:
        return None
    return fit_arrays(model, estimated, _design(samples), _column(samples, "energy_j"),
                      _column(samples, "energy_dynamic_j"), _column(samples, "duration_s"),
                      fitted_at)  # fmt: skip


def fit_arrays(
    model: str, estimated: bool, x: FloatArray, energy_j: FloatArray,
    energy_dynamic_j: FloatArray, duration_s: FloatArray, fitted_at: str,
) -> ModelFit | None:  # fmt: skip
    """:func:`fit_model` on columns (the design ``x`` shared by the three fits)."""
    if len(energy_j) < MIN_FIT_ROWS:
        return None
    return ModelFit(
        model,
        estimated,
        huber_fit(x, energy_j),
        _fit_optional(x, energy_dynamic_j),
        _fit_optional(x, duration_s),
        fitted_at,
    )


def fit_samples(samples: Iterable[Sample], now: dt.datetime | None = None) -> FitSet:
    """Every model's fits and every (model, task)'s token quantiles (blocking: use a thread)."""
    fitted_at = iso(now or dt.datetime.now(dt.UTC))
    by_fit: dict[tuple[str, bool], list[Sample]] = defaultdict(list)
    by_task: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    model_rows: dict[str, int] = defaultdict(int)
    count = 0
    for s in samples:
        count += 1
        model_rows[s.model] += 1
        by_fit[(s.model, s.estimated)].append(s)
        by_task[(s.model, s.task or "(none)")].append(s)
        by_task[(s.model, ALL_TASKS)].append(s)
    fits = {
        key: fit
        for key, rows in by_fit.items()
        if (fit := fit_model(key[0], key[1], rows, fitted_at)) is not None
    }
    tokens = {
        key: token_history(_column(rows, "completion_tokens"),
                           np.array([s.hit_cap for s in rows], dtype=bool))
        for key, rows in by_task.items()
        if len(rows) >= MIN_TOKEN_ROWS
    }  # fmt: skip
    return FitSet(fits, tokens, fitted_at, count, dict(model_rows))


SAMPLE_COLUMNS = (
    "model_served, task, energy_estimated, prompt_tokens, completion_tokens, energy_j,"
    " energy_dynamic_j, duration_s, CASE WHEN finish_reason = 'length' THEN 1 ELSE 0 END"
)
SAMPLE_WHERE = (
    "failure IS NULL AND status < 400 AND model_served IS NOT NULL"
    " AND prompt_tokens IS NOT NULL AND completion_tokens IS NOT NULL AND energy_j IS NOT NULL"
)
SAMPLE_SQL = f"SELECT {SAMPLE_COLUMNS} FROM requests WHERE {SAMPLE_WHERE}"  # noqa: S608
"""The completed rows a fit may use (add a condition, an order and a limit)."""


def sample_from_sql(r: Sequence[object]) -> Sample:
    """A :class:`Sample` from one :data:`SAMPLE_SQL` row.

    SQLite already gives these columns their Python types (TEXT, INTEGER, REAL, NULL
    as None; :data:`SAMPLE_WHERE` rules out the NULLs that matter), so nothing is
    converted: a refit reads up to a million of them.
    """
    return Sample(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7], bool(r[8]))  # type: ignore[arg-type]
