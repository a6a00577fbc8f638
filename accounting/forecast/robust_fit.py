"""Robust linear fits: ``y ≈ a + b * x1 + c * x2`` by Huber IRLS, on numpy arrays.

Huber weights by iteratively reweighted least squares, the scale re-estimated from
the residuals' median absolute deviation each round, so the odd gross outlier (a
thermal pause, a stalled backend) barely moves the coefficients. Pure computation
and blocking on big arrays: callers run it in a thread (:mod:`accounting.forecast.fit`
fits each model's energy, dynamic energy and duration with it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HUBER_K = 1.345
"""Huber's tuning constant: 95% efficiency on normal noise."""

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LinearFit:
    """``y ≈ a + b * prompt_tokens + c * completion_tokens`` and how well it fits."""

    a: float
    b: float
    c: float
    r2: float
    """Weighted by the robust weights: the rows it set aside do not count against it."""
    rows: int
    residual_p10: float
    residual_p90: float

    def at(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The fitted value for one request."""
        return self.a + self.b * prompt_tokens + self.c * completion_tokens


def huber_fit(x: FloatArray, y: FloatArray, *, iterations: int = 50) -> LinearFit:
    """Robust ``y ≈ x @ (a, b, c)`` (``x``'s first column is ones) by IRLS with Huber weights.

    A token column that never varies (every prompt the same length) cannot be told
    from the constant: its coefficient is 0 rather than an arbitrary split with ``a``.
    """
    varies = [True, *(bool(np.ptp(x[:, j]) > 0) for j in range(1, x.shape[1]))]
    if not all(varies):
        part = huber_fit_full(x[:, varies], y, iterations=iterations)
        coef = iter([part.a, part.b, part.c])
        full = [next(coef) if v else 0.0 for v in varies]
        return LinearFit(full[0], full[1], full[2], part.r2, part.rows,
                         part.residual_p10, part.residual_p90)  # fmt: skip
    return huber_fit_full(x, y, iterations=iterations)


def _median(a: FloatArray) -> float:
    """``np.median`` of ``a``, reordering ``a`` in place: one single-pivot partition
    (``np.median`` partitions at two pivots and checks for NaN, ~4x slower here)."""
    k = len(a) // 2
    a.partition(k)
    if len(a) % 2:
        return float(a[k])
    return float((a[:k].max() + a[k]) / 2)


class _NormalEquations:
    """The weighted 3x3 normal equations of one fit, one pass over the rows a step.

    The products of the design's columns with each other and with ``y`` are formed
    once; each IRLS step is then their weighted sums and a solve of the small system,
    instead of weighting and multiplying all the rows again (a refit solves this ~15
    times a fit on a million rows). Token counts keep the system well conditioned;
    lstsq on the small matrix still copes with a column that does not vary.

    The sums are ``einsum``, not ``@``: a threaded BLAS gemv on two shared cores was
    several times slower than one core's plain loop, and it contends with the server.
    """

    def __init__(self, xt: FloatArray, y: FloatArray) -> None:
        k = xt.shape[0]
        self._upper = np.triu_indices(k)
        pairs = [xt[i] * xt[j] for i, j in zip(*self._upper, strict=True)]
        self._products = np.vstack([*pairs, xt * y])
        self._k, self._pairs = k, len(pairs)

    def solve(self, w: FloatArray) -> FloatArray:
        """The coefficients minimising ``sum(w * (y - x @ beta) ** 2)``."""
        sums = np.einsum("ij,j->i", self._products, w)
        a = np.empty((self._k, self._k))
        a[self._upper] = sums[: self._pairs]
        a.T[self._upper] = sums[: self._pairs]
        solution = np.linalg.lstsq(a, sums[self._pairs :], rcond=None)[0]
        return np.asarray(solution, dtype=np.float64)


def huber_fit_full(x: FloatArray, y: FloatArray, *, iterations: int = 50) -> LinearFit:
    """:func:`huber_fit` on columns that all vary (or fewer of them: missing ones are 0)."""
    xt = np.ascontiguousarray(x.T)
    normal = _NormalEquations(xt, y)
    w = np.ones_like(y)
    beta = normal.solve(w)
    tiny = 1e-12 * max(1.0, float(np.abs(y).max()))
    r, buf = np.empty_like(y), np.empty_like(y)
    for _ in range(iterations):
        np.subtract(y, np.einsum("i,ij->j", beta, xt), out=r)
        buf[:] = r
        np.subtract(r, _median(buf), out=buf)
        np.abs(buf, out=buf)
        scale = 1.4826 * _median(buf)
        if scale <= tiny:
            break  # an exact fit: nothing left to weigh
        # Huber's weight min(1, k * scale / |r|): 1 within k robust deviations.
        np.abs(r, out=buf)
        np.maximum(buf, HUBER_K * scale * 1e-12, out=buf)
        np.divide(HUBER_K * scale, buf, out=w)
        np.minimum(w, 1.0, out=w)
        new = normal.solve(w)
        if np.allclose(new, beta, rtol=1e-9, atol=1e-12):
            beta = new
            break
        beta = new
    r = y - np.einsum("i,ij->j", beta, xt)
    mean = float(np.average(y, weights=w))
    total = float(np.sum(w * (y - mean) ** 2))
    r2 = 1.0 - float(np.sum(w * r**2)) / total if total > 0 else 1.0
    p10, p90 = (float(v) for v in np.quantile(r, [0.1, 0.9]))
    coef = [*(float(v) for v in beta), 0.0, 0.0]
    return LinearFit(coef[0], coef[1], coef[2], r2, len(y), p10, p90)
