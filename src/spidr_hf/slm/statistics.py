"""
How sure a spoken-LM score is: 95 % bootstrap intervals of an accuracy over its pairs (`bootstrap_interval`,
scipy's `stats.bootstrap`), whether two sources' intervals leave each other apart (`separated`), and the rank
correlation of two figures across unit sources with its own bootstrap interval (`spearman_with_interval`). Every
draw is seeded: the same inputs and seed give the same intervals.
"""

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0


def bootstrap_interval(
    values: Sequence[float], seed: int = SEED, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """
    The percentile bootstrap interval, in %, of the mean of `values` (the per-pair scores 1, 0.5 or 0, or their means
    over voices): pairs drawn with replacement `resamples` times. The percentile method, not BCa: BCa is undefined
    when every pair scored the same (its acceleration divides by zero), which a tiny benchmark can give.
    """
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        raise ValueError("An interval needs at least one pair")
    if np.all(data == data[0]):  # every resample has the same mean: the interval is that point
        return 100 * float(data[0]), 100 * float(data[0])
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return 100 * float(interval.low), 100 * float(interval.high)


def separated(first: Sequence[float], second: Sequence[float]) -> bool:
    """Whether two intervals `(low, high)` do not overlap."""
    return first[1] < second[0] or second[1] < first[0]


def spearman_with_interval(
    x: Sequence[float],
    y: Sequence[float],
    seed: int = SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, float | int | list[float]]:
    """
    Spearman's rank correlation of `x` and `y` (one value per unit source) and its percentile bootstrap interval over
    the sources (drawn with replacement, x and y together). Written out rather than through `stats.bootstrap`: a
    resample of few sources can hold one source only, whose correlation is undefined, and those resamples are left out
    (their number is returned), where scipy's interval would be NaN.
    """
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"A rank correlation needs at least 3 paired values, got {len(x)} and {len(y)}")
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        index = rng.integers(0, len(x), len(x))
        if np.ptp(x[index]) == 0 or np.ptp(y[index]) == 0:
            continue
        draws.append(stats.spearmanr(x[index], y[index]).statistic)
    alpha = (1 - confidence) / 2
    low, high = (float(np.quantile(draws, q)) for q in (alpha, 1 - alpha)) if draws else (math.nan, math.nan)
    return {"rho": rho, "ci95": [low, high], "n": len(x), "undefined_resamples": resamples - len(draws)}
