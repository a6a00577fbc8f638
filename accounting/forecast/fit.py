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

Output tokens are not known before the request runs: they are predicted as the
10th, 50th and 90th percentiles of what the same model produced for the same
task (every task when the request names none), capped by ``max_tokens``. The
80% interval of a figure is the fit at the p10 and p90 token counts, widened by
the fit's own residual p10 and p90; it always holds the median.

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

from accounting.forecast.robust_fit import FloatArray, LinearFit, huber_fit
from accounting.ledger.rows import iso

MIN_FIT_ROWS = 8
"""Fewer completed rows than this and a model has no fit (three coefficients need slack)."""
MIN_TOKEN_ROWS = 3
"""Fewer than this and a (model, task) has no token history."""
ALL_TASKS = "*"
"""The token-history key of a model's rows over every task."""

Basis = Literal["task history", "max_tokens cap", "no history"]


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


@dataclass(frozen=True, slots=True)
class FitSet:
    """Every model's fit and token history at one moment; replaced whole on a refit."""

    fits: dict[tuple[str, bool], ModelFit] = field(default_factory=dict)
    tokens: dict[tuple[str, str], tuple[float, float, float]] = field(default_factory=dict)
    """(model, task or ``*``) → completion tokens p10, p50, p90."""
    fitted_at: str | None = None
    rows: int = 0

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
        q = self.tokens.get((model, task or ALL_TASKS))
        basis: Basis = "task history"
        if q is None:
            if max_tokens is None:
                what = f"for task {task!r}" if task else "at all"
                return Prediction(
                    "no history",
                    f"no completed requests of {model!r} {what} and no max_tokens to cap",
                    fit=fit,
                )
            basis, q = "max_tokens cap", (max_tokens, max_tokens, max_tokens)
        elif max_tokens is not None:
            q = (min(q[0], max_tokens), min(q[1], max_tokens), min(q[2], max_tokens))
        tokens = Interval(q[1], q[0], q[2])

        def figure(lf: LinearFit | None) -> Interval | None:
            # Ordered whatever the fit's signs: on a few noisy rows the per-token slope
            # can come out negative, and the residual quantiles need not straddle zero.
            if lf is None:
                return None
            ends = lf.at(prompt_tokens, q[0]), lf.at(prompt_tokens, q[2])
            return Interval(
                max(0.0, lf.at(prompt_tokens, q[1])),
                max(0.0, min(ends) + min(lf.residual_p10, 0.0)),
                max(0.0, max(ends) + max(lf.residual_p90, 0.0)),
            )

        return Prediction(
            basis,
            None,
            tokens,
            figure(fit.energy),
            figure(fit.energy_dynamic),
            figure(fit.duration),
            fit,
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
    by_task: dict[tuple[str, str], list[int]] = defaultdict(list)
    count = 0
    for s in samples:
        count += 1
        by_fit[(s.model, s.estimated)].append(s)
        by_task[(s.model, s.task or "(none)")].append(s.completion_tokens)
        by_task[(s.model, ALL_TASKS)].append(s.completion_tokens)
    fits = {
        key: fit
        for key, rows in by_fit.items()
        if (fit := fit_model(key[0], key[1], rows, fitted_at)) is not None
    }
    tokens: dict[tuple[str, str], tuple[float, float, float]] = {}
    for key, values in by_task.items():
        if len(values) >= MIN_TOKEN_ROWS:
            q10, q50, q90 = (float(v) for v in np.quantile(np.array(values), [0.1, 0.5, 0.9]))
            tokens[key] = (q10, q50, q90)
    return FitSet(fits, tokens, fitted_at, count)


SAMPLE_COLUMNS = (
    "model_served, task, energy_estimated, prompt_tokens, completion_tokens, energy_j,"
    " energy_dynamic_j, duration_s"
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
    return Sample(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6], r[7])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """How a fit on earlier rows did on later ones, for one (model, task)."""

    model: str
    task: str
    test_rows: int
    r2_actual_tokens: float | None
    """R^2 of the energy fit given each request's actual tokens (None: no fit)."""
    mape_pct: float | None
    """Mean absolute percentage error of the before-the-fact forecast (None: none made)."""
    forecast_rows: int


def evaluate(fs: FitSet, test: Sequence[tuple[Sample, int | None]]) -> list[Evaluation]:
    """Score ``fs`` on later rows (each with its request's ``max_tokens``), per (model, task)."""
    groups: dict[tuple[str, str], list[tuple[Sample, int | None]]] = defaultdict(list)
    for item in test:
        groups[(item[0].model, item[0].task or "(none)")].append(item)
    out: list[Evaluation] = []
    for (model, task), items in sorted(groups.items()):
        y = np.array([s.energy_j for s, _ in items])
        fit = fs.fit_for(model)
        r2 = None
        if fit is not None and len(items) >= 2:
            f = np.array([fit.energy.at(s.prompt_tokens, s.completion_tokens) for s, _ in items])
            total = float(np.sum((y - y.mean()) ** 2))
            r2 = 1.0 - float(np.sum((y - f) ** 2)) / total if total > 0 else None
        errors = []
        for s, cap in items:
            e = fs.predict(model, s.task, s.prompt_tokens, cap).energy_j
            if e is not None and s.energy_j > 0:
                errors.append(abs(e.p50 - s.energy_j) / s.energy_j)
        mape = 100.0 * float(np.mean(errors)) if errors else None
        out.append(Evaluation(model, task, len(items), r2, mape, len(errors)))
    return out
