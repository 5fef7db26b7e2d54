"""Chi-square tests shared by the statistical tests (no scipy here)."""

from __future__ import annotations

import torch


def chi2_pvalue(counts: list[int], expected_probs: list[float]) -> float:
    """Pearson chi-square goodness-of-fit p-value; cells expected < 5 are pooled into one."""
    if any(c > 0 and pr <= 0 for c, pr in zip(counts, expected_probs)):
        return 0.0  # a draw the exact distribution says is impossible
    total = sum(counts)
    big, pool_obs, pool_exp = [], 0.0, 0.0
    for c, pr in zip(counts, expected_probs):
        e = total * pr
        if e >= 5:
            big.append((c, e))
        elif e > 0:
            pool_obs, pool_exp = pool_obs + c, pool_exp + e
    if pool_exp > 0:
        if pool_exp < 5 and big:  # fold a small pool into the smallest big cell
            c, e = big.pop(min(range(len(big)), key=lambda i: big[i][1]))
            pool_obs, pool_exp = pool_obs + c, pool_exp + e
        big.append((pool_obs, pool_exp))
    stat = sum((c - e) ** 2 / e for c, e in big)
    return _chi2_sf(stat, len(big) - 1)


def chi2_two_sample_pvalue(a: dict, b: dict) -> float:
    """Do two equally sized samples (outcome -> count) come from one distribution?"""
    assert sum(a.values()) == sum(b.values())
    keys = set(a) | set(b)
    small = [k for k in keys if a.get(k, 0) + b.get(k, 0) < 10]
    cells = [(a.get(k, 0), b.get(k, 0)) for k in keys if k not in small]
    pooled = (sum(a.get(k, 0) for k in small), sum(b.get(k, 0) for k in small))
    if sum(pooled) > 0:
        cells.append(pooled)
    stat = sum((x - y) ** 2 / (x + y) for x, y in cells)
    return _chi2_sf(stat, len(cells) - 1)


def _chi2_sf(stat: float, dof: int) -> float:
    if dof <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))
