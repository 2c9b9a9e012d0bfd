"""Perturbations of E_post: identities at their neutral level, reproducible from the key, and
doing what their names say."""

from __future__ import annotations

import pytest
import torch

from src.models.perturb import MODES, perturb

X = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode", ["mask", "noise", "orthogonal"])
def test_level_zero_is_identity(mode):
    assert torch.equal(perturb(X, mode, 0.0, "img1"), X)


def test_lowrank_at_full_rank_is_identity():
    assert torch.equal(perturb(X, "lowrank", 1.0, "img1"), X)


def test_lowrank_keeps_the_requested_rank_and_the_mean():
    y = perturb(X, "lowrank", 0.25, "img1")  # round(0.25 * 16) = 4 components
    assert torch.linalg.matrix_rank(y - y.mean(0)).item() == 4
    torch.testing.assert_close(y.mean(0), X.mean(0), atol=1e-5, rtol=0)
    # the best rank-4 approximation: its error is the energy of the dropped singular values
    s = torch.linalg.svdvals(X - X.mean(0))
    torch.testing.assert_close((y - X).pow(2).sum(), s[4:].pow(2).sum(), rtol=1e-4, atol=1e-4)


def test_mask_is_reproducible_from_the_key_and_zeroes_the_share():
    a, b = perturb(X, "mask", 0.5, "img1"), perturb(X, "mask", 0.5, "img1")
    assert torch.equal(a, b)
    zero_rows = (a == 0).all(1)
    assert int(zero_rows.sum()) == 8
    assert torch.equal(a[~zero_rows], X[~zero_rows])
    other = perturb(X, "mask", 0.5, "img2")
    assert not torch.equal((other == 0).all(1), zero_rows)
    assert not torch.equal(perturb(X, "mask", 0.5, "img1", seed=1), a)


def test_noise_has_the_requested_power():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    y = perturb(x, "noise", 0.1, "k")
    ratio = (y - x).pow(2).mean() / x.pow(2).mean()
    assert 0.09 < float(ratio) < 0.11
    assert torch.equal(y, perturb(x, "noise", 0.1, "k"))


def test_rotation_keeps_norms_and_moves_with_level():
    y1, y2 = perturb(X, "orthogonal", 0.2, "a"), perturb(X, "orthogonal", 1.0, "b")
    torch.testing.assert_close(y1.norm(dim=1), X.norm(dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2.norm(dim=1), X.norm(dim=1), rtol=1e-5, atol=1e-5)
    cos = torch.nn.functional.cosine_similarity
    assert cos(X, y1).mean() > cos(X, y2).mean()
    # one rotation for all images: pairwise inner products survive
    torch.testing.assert_close(y2 @ y2.T, X @ X.T, rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(X, "blur", 0.1, "k")
    with pytest.raises(ValueError, match="level"):
        perturb(X, "mask", 1.5, "k")
    assert set(MODES) == {"mask", "lowrank", "noise", "orthogonal"}
