"""Experiments: statistics — ratio metrics with user-level (delta-method) intervals and their differences, the
sample-ratio-mismatch chi-square test, and the sign test for interleaving.

The unit of randomisation is the user, but click-through is measured per item shown: a user's impressions are
correlated, so an interval that treats every impression as independent is too narrow. Every ratio metric here is
sum(numerator) / sum(denominator) over users, and its variance is the delta-method (linearisation) variance over
users: Var(R) ~ Var_u(x_u - R n_u) / (N * mean(n)^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

SRM_THRESHOLD = 0.001  # the usual alarm level: a real mismatch gives p far below it, chance rarely does


@dataclass(frozen=True)
class Estimate:
    """A ratio metric of one arm with its 95 % interval (None where it cannot be estimated)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    units: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """Treatment minus control with its 95 % interval and two-sided p-value; `relative` = diff / control."""

    diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    relative: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z(level: float) -> float:
    return float(sps.norm.ppf(0.5 + level / 2))


def ratio_moments(num: Sequence[float] | np.ndarray, den: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """R = sum(num) / sum(den) over units and its delta-method variance (nan where not estimable)."""
    x, n = np.asarray(num, float), np.asarray(den, float)
    if x.shape != n.shape or x.ndim != 1:
        raise ValueError(f"numerator and denominator must be 1-d arrays of equal length; got {x.shape}, {n.shape}")
    if len(x) == 0 or n.sum() <= 0:
        return math.nan, math.nan
    r = float(x.sum() / n.sum())
    if len(x) < 2:
        return r, math.nan
    var = float(np.var(x - r * n, ddof=1) / (len(x) * n.mean() ** 2))
    return r, var


def ratio(
    num: Sequence[float] | np.ndarray,
    den: Sequence[float] | np.ndarray,
    level: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Estimate:
    """R with its interval, clipped to `bounds` (a share lies in [0, 1])."""
    r, var = ratio_moments(num, den)
    if math.isnan(r):
        return Estimate(None, None, None, len(num))
    if math.isnan(var):
        return Estimate(r, None, None, len(num))
    half = _z(level) * math.sqrt(var)
    return Estimate(r, max(bounds[0], r - half), min(bounds[1], r + half), len(num))


def _difference(r_t: float, v_t: float, r_c: float, v_c: float, level: float) -> Difference:
    if math.isnan(r_t) or math.isnan(r_c):
        return Difference(None, None, None, None, None)
    d = r_t - r_c
    rel = d / r_c if r_c != 0 else None
    se = math.sqrt(v_t + v_c) if not (math.isnan(v_t) or math.isnan(v_c)) else math.nan
    if math.isnan(se) or se <= 0:
        return Difference(d, None, None, 1.0 if d == 0 and se == 0 else None, rel)
    p = float(2 * sps.norm.sf(abs(d) / se))
    half = _z(level) * se
    return Difference(d, d - half, d + half, p, rel)


def ratio_difference(
    num_t: Sequence[float] | np.ndarray,
    den_t: Sequence[float] | np.ndarray,
    num_c: Sequence[float] | np.ndarray,
    den_c: Sequence[float] | np.ndarray,
    level: float = 0.95,
) -> Difference:
    """Difference of two independent arms' ratio metrics (per-user numerators and denominators), delta method."""
    return _difference(*ratio_moments(num_t, den_t), *ratio_moments(num_c, den_c), level)


def two_proportion(x_t: int, n_t: int, x_c: int, n_c: int, level: float = 0.95) -> Difference:
    """Wald interval for p_t - p_c treating every trial as independent (correct when each unit is one trial)."""
    if n_t <= 0 or n_c <= 0:
        return Difference(None, None, None, None, None)
    p_t, p_c = x_t / n_t, x_c / n_c
    return _difference(p_t, p_t * (1 - p_t) / n_t, p_c, p_c * (1 - p_c) / n_c, level)


def srm(observed: Sequence[int], shares: Sequence[float], threshold: float = SRM_THRESHOLD) -> dict[str, Any]:
    """Sample-ratio mismatch: chi-square goodness of fit of the users per arm to the configured traffic shares.
    A mismatch means assignment or logging is broken and no metric of the experiment can be trusted."""
    obs = np.asarray(observed, float)
    exp_share = np.asarray(shares, float)
    if obs.shape != exp_share.shape:
        raise ValueError(f"observed counts {obs.shape} and shares {exp_share.shape} differ in length")
    total = float(obs.sum())
    keep = exp_share > 0
    if total == 0 or keep.sum() < 2:
        return {"chi2": None, "p_value": None, "mismatch": False, "threshold": threshold}
    if (obs[~keep] > 0).any():
        return {"chi2": math.inf, "p_value": 0.0, "mismatch": True, "threshold": threshold}
    expected = total * exp_share[keep] / exp_share[keep].sum()
    chi2, p = sps.chisquare(obs[keep], expected)
    return {"chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < threshold), "threshold": threshold}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial test of wins against losses at 1/2 (ties left out)."""
    n = wins + losses
    return 1.0 if n == 0 else float(sps.binomtest(wins, n, 0.5).pvalue)
