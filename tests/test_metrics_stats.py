"""Bootstrap and permutation helpers against plain references and known distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.metrics.stats import bootstrap_ci, bootstrap_means, permutation_pvalue, summarize


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
