"""The few statistics a study needs: a mean with its t-interval, and a straight line.

Written out rather than taken from scipy (a large dependency for three functions).
The t quantile inverts Student's t CDF, computed from the regularised incomplete
beta function (Lentz's continued fraction, as in *Numerical Recipes* §6.4), by
bisection; it matches published tables to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Estimate:
    """A sample's mean and the two-sided confidence interval around it."""

    n: int
    mean: float
    low: float
    """Lower bound (equal to ``mean`` with fewer than two values: no interval)."""
    high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width (the ``±`` figure)."""
        return (self.high - self.low) / 2.0


@dataclass(frozen=True, slots=True)
class LineFit:
    """Least-squares line ``y = intercept + slope * x`` and its coefficient of determination."""

    slope: float
    intercept: float
    r2: float
    """1.0 for a perfect fit; NaN when y does not vary (nothing to explain)."""
    n: int


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (NaN for no values)."""
    return math.fsum(values) / len(values) if values else math.nan


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator); NaN below two values."""
    n = len(values)
    if n < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def confidence_interval(values: Sequence[float], level: float = 0.95) -> Estimate:
    """The mean of ``values`` with its t-distribution confidence interval."""
    n = len(values)
    m = mean(values)
    if n < 2:
        return Estimate(n, m, m, m)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sample_sd(values) / math.sqrt(n)
    return Estimate(n, m, m - half, m + half)


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0 (got p={p}, df={df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def t_cdf(t: float, df: float) -> float:
    """Student's t cumulative distribution function."""
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> LineFit:
    """Ordinary least squares of ``ys`` on ``xs`` (at least two distinct x values)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("linear_fit needs two or more (x, y) pairs")
    mx, my = mean(xs), mean(ys)
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("linear_fit needs at least two distinct x values")
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = math.fsum((y - my) ** 2 for y in ys)
    ss_res = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return LineFit(slope, intercept, r2, n)


def _betai(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h
