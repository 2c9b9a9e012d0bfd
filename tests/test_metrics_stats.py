"""Bootstrap and permutation helpers against plain references and known distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.metrics.stats import (
    bootstrap_ci,
    bootstrap_means,
    bootstrap_spearman,
    derangement,
    permutation_pvalue,
    spearman,
    summarize,
)


def test_bootstrap_matches_a_plain_loop():
    v = torch.randn(37, generator=torch.Generator().manual_seed(0))
    fast = bootstrap_means(v, n_boot=50, seed=3)
    g = torch.Generator().manual_seed(3)
    slow = torch.stack(
        [v.double()[torch.randint(37, (1, 37), generator=g)[0]].mean() for _ in range(50)]
    )
    torch.testing.assert_close(fast, slow)


def test_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        lo, hi = bootstrap_ci(torch.tensor(rng.normal(1.0, 2.0, 60)), n_boot=400, seed=i)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_summary_fields_and_seeding():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = summarize(v, n_boot=200, seed=1)
    assert s["mean"] == 2.5 and s["median"] == 2.0 and s["n"] == 4
    assert s["ci_low"] <= 2.5 <= s["ci_high"]
    assert s == summarize(v, n_boot=200, seed=1)


def test_permutation_pvalue():
    null = torch.arange(99, dtype=torch.float64)
    assert permutation_pvalue(1000.0, null) == 1 / 100
    assert permutation_pvalue(-1.0, null) == 1.0
    assert permutation_pvalue(49.0, null) == pytest.approx(51 / 100)


@pytest.mark.parametrize("bad", [torch.zeros(0), torch.zeros(2, 2), torch.tensor([1.0, np.nan])])
def test_bad_inputs(bad):
    with pytest.raises(ValueError):
        summarize(bad)


@pytest.mark.parametrize("n", [2, 3, 17, 500])
def test_derangement_is_a_permutation_without_fixed_points(n):
    d = derangement(n, seed=n)
    assert sorted(d.tolist()) == list(range(n))
    assert (d != torch.arange(n)).all()
    assert torch.equal(d, derangement(n, seed=n))  # seeded
    with pytest.raises(ValueError):
        derangement(1)


def test_spearman_matches_scipy_and_its_bootstrap_ci_covers_it():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, generator=g, dtype=torch.float64)
    y = x + 0.8 * torch.randn(120, generator=g, dtype=torch.float64)
    y[:10] = y[0]  # ties get their average rank
    want = stats.spearmanr(x.numpy(), y.numpy()).statistic
    assert spearman(x, y) == pytest.approx(want, abs=1e-12)
    res = bootstrap_spearman(x, y, n_boot=300, seed=1)
    assert res["rho"] == pytest.approx(want, abs=1e-12)
    assert res["ci_low"] < res["rho"] < res["ci_high"] and res["n"] == 120
    # Invariant under monotone maps of either side.
    assert spearman(x.exp(), y**3) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError):
        spearman(x, y[:-1])
