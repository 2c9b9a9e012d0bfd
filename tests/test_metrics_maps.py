"""src/metrics/maps.py against scipy (procrustes, pdist + spearmanr) and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import procrustes
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from src.metrics.maps import procrustes_disparity, rdm, ridge_map, rsa, rsa_test, upper


def _pair(n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    return torch.randn(n, d, generator=g, dtype=f64), torch.randn(n, d, generator=g, dtype=f64)


def test_procrustes_matches_scipy():
    x, y = _pair()
    _, _, want = procrustes(x.numpy(), y.numpy())
    assert procrustes_disparity(x, y) == pytest.approx(want, abs=1e-10)
    y2 = 0.3 * x + 0.1 * y
    assert procrustes_disparity(x, y2) == pytest.approx(procrustes(x.numpy(), y2.numpy())[2])


def test_procrustes_is_zero_for_a_similar_shape_and_in_unit_interval():
    x, _ = _pair()
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert procrustes_disparity(x, 3.0 * x @ q + 5.0) == pytest.approx(0, abs=1e-12)
    for seed in range(5):
        a, b = _pair(n=8, d=3, seed=seed)
        assert 0 <= procrustes_disparity(a, b) <= 1


def test_rsa_matches_pdist_and_spearmanr():
    x, y = _pair(n=25)
    f64 = torch.float64
    y = x[:, :3] @ torch.randn(3, 9, dtype=f64) + 0.5 * torch.randn(25, 9, dtype=f64)
    for metric in ("cosine", "euclidean"):
        want = spearmanr(pdist(x.numpy(), metric), pdist(y.numpy(), metric)).statistic
        assert rsa(x, y, metric) == pytest.approx(want, abs=1e-10)
        np.testing.assert_allclose(upper(rdm(x, metric)).numpy(), pdist(x.numpy(), metric),
                                   atol=1e-10)  # fmt: skip


def test_rsa_test_ci_and_null():
    x, z = _pair(n=30)
    related = x @ torch.randn(6, 6, dtype=torch.float64) + 0.3 * z
    r = rsa_test(x, related, n_boot=200, n_perm=200)
    assert r["ci_low"] <= r["rho"] <= r["ci_high"] and r["p_perm"] < 0.05
    assert r["n_pairs"] == 435
    unrelated = rsa_test(x, z, n_boot=200, n_perm=200)
    assert unrelated["p_perm"] > 0.01 and unrelated["ci_low"] < 0.2


def test_ridge_map_recovers_a_linear_map():
    x, _ = _pair(n=60, d=5)
    w = torch.randn(5, 3, dtype=torch.float64)
    f = ridge_map(x[:40], x[:40] @ w + 1.0, alpha=1e-9)
    torch.testing.assert_close(f(x[40:]).double(), x[40:] @ w + 1.0, atol=1e-4, rtol=1e-4)
