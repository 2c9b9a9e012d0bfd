"""Spectral statistics against np.linalg.svd references, and their defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.metrics.spectra import (
    centered_singular_values,
    dataset_singular_values,
    dataset_spectra,
    spectral_summary,
    standardize_channels,
    token_spectra,
)


def ref_stats(x: np.ndarray, standardize: bool = False) -> dict[str, float]:
    """Plain reference on one (T, D) matrix: centre (or z-score), SVD, formulas from DESIGN.md."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(0)
    if standardize:
        std = x.std(0)
        xc = np.where(std > 0, xc / np.where(std > 0, std, 1), 0.0)
    s = np.linalg.svd(xc, compute_uv=False)
    p = s**2 / (s**2).sum()
    q = s / s.sum()

    def entropy(v: np.ndarray) -> float:
        v = v[v > 0]
        return float(-(v * np.log(v)).sum())

    size = min(x.shape)
    cum = np.cumsum(p)
    out = {
        "erank_energy": np.exp(entropy(p)),
        "erank_rv": np.exp(entropy(q)),
        "k80": int(np.argmax(cum >= 0.8 - 1e-9)) + 1,
        "k90": int(np.argmax(cum >= 0.9 - 1e-9)) + 1,
    }
    out["erank_energy_norm"] = out["erank_energy"] / size
    out["erank_rv_norm"] = out["erank_rv"] / size
    for k in (1, 5, 10):
        out[f"top{k}_energy"] = float(p[:k].sum())
    return out


def anisotropic(b: int, t: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, d, generator=g, dtype=torch.float64) * torch.logspace(
        0, 1.5, d, dtype=torch.float64
    )


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize(("t", "d"), [(20, 8), (6, 12)])
def test_token_spectra_match_reference(standardize, t, d):
    x = anisotropic(4, t, d) + 5.0  # an offset that centring must remove
    out = token_spectra(x, standardize=standardize)
    for b in range(4):
        ref = ref_stats(x[b].numpy(), standardize)
        for name, value in ref.items():
            assert out[name][b].item() == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_float32_input_is_close_to_the_float64_reference():
    x = anisotropic(3, 30, 10).float()
    out = token_spectra(x)
    for b in range(3):
        ref = ref_stats(x[b].double().numpy())
        assert out["erank_energy"][b].item() == pytest.approx(ref["erank_energy"], rel=1e-5)
        assert out["erank_rv"][b].item() == pytest.approx(ref["erank_rv"], rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_isotropic_full_rank_matrix_has_erank_equal_to_its_rank(dtype):
    # Orthonormal columns that are already centred: every singular value is 1.
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 12, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(a - a.mean(0))[0].to(dtype)
    out = token_spectra(q.unsqueeze(0))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert out["erank_energy"][0].item() == pytest.approx(12, rel=tol)
    assert out["erank_rv"][0].item() == pytest.approx(12, rel=tol)
    assert out["rank"][0].item() == 12
    assert out["k80"][0].item() == 10  # ceil(0.8 * 12)
    assert out["top1_energy"][0].item() == pytest.approx(1 / 12, rel=tol)
    assert out["erank_energy_norm"][0].item() == pytest.approx(12 / 12, rel=tol)


def test_low_rank_matrix():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 20, generator=g, dtype=torch.float64
    )
    out = token_spectra(x.unsqueeze(0))
    assert out["rank"][0].item() == 3
    assert out["erank_energy"][0].item() <= 3 + 1e-9
    assert out["top5_energy"][0].item() == pytest.approx(1.0)


def test_batched_equals_one_by_one_and_variable_token_counts():
    g = torch.Generator().manual_seed(2)
    mats = [torch.randn(t, 9, generator=g) for t in (5, 12, 5, 30, 12, 2)]
    out = token_spectra(mats, batch_size=2)
    for i, m in enumerate(mats):
        one = token_spectra(m.unsqueeze(0))
        for name in out:
            torch.testing.assert_close(out[name][i], one[name][0])
    assert out["erank_energy_norm"][5].item() == pytest.approx(1 / 2)  # 2 tokens: rank 1


def test_constant_channel_is_zeroed_when_standardising():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(15, 6, generator=g, dtype=torch.float64)
    x[:, 2] = 7.25  # zero variance
    z = standardize_channels(x)
    assert torch.isfinite(z).all() and (z[:, 2] == 0).all()
    out = token_spectra(x.unsqueeze(0), standardize=True)
    ref = ref_stats(x.numpy(), standardize=True)
    assert out["erank_energy"][0].item() == pytest.approx(ref["erank_energy"], rel=1e-9)
    assert out["rank"][0].item() == 5


def test_standardising_undoes_huge_channels():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 10, generator=g, dtype=torch.float64)
    x[:, 0] *= 1e4  # one huge channel dominates the raw spectrum
    raw = token_spectra(x.unsqueeze(0))["erank_energy"][0].item()
    std = token_spectra(x.unsqueeze(0), standardize=True)["erank_energy"][0].item()
    assert raw < 1.01 and std > 9


@pytest.mark.parametrize("standardize", [False, True])
def test_dataset_spectra_streamed_equal_one_matrix(standardize):
    g = torch.Generator().manual_seed(5)
    x = (
        torch.randn(90, 7, generator=g, dtype=torch.float64)
        * torch.arange(1, 8, dtype=torch.float64)
        + 100.0
    )
    whole = dataset_spectra(x, standardize=standardize)
    streamed = dataset_spectra([x[:10], x[10:55], x[55:]], standardize=standardize)
    ref = ref_stats(x.numpy(), standardize)
    for name, value in ref.items():
        assert whole[name] == pytest.approx(value, rel=1e-8), name
        assert streamed[name] == pytest.approx(value, rel=1e-8), name
    s, n = dataset_singular_values(x[:5])  # N < D: min(N, D) values
    assert n == 5 and s.shape == (5,)


def test_rank_zero_is_nan_and_bad_inputs_raise():
    same_rows = torch.ones(2, 8, 4) * torch.randn(2, 1, 4)
    out = token_spectra(same_rows)
    assert all(torch.isnan(v).all() for v in out.values())
    assert np.isnan(dataset_spectra(same_rows[0])["erank_energy"])
    assert (centered_singular_values(same_rows) == 0).all()
    assert torch.isnan(spectral_summary(torch.zeros(3))["k80"])
    with pytest.raises(ValueError, match="T=1"):
        token_spectra(torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        token_spectra(torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="no images"):
        token_spectra([])
    with pytest.raises(ValueError, match="empty"):
        centered_singular_values(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="one D"):
        token_spectra([torch.randn(3, 4), torch.randn(3, 5)])
    with pytest.raises(ValueError, match="no chunks"):
        dataset_spectra([])
    with pytest.raises(ValueError, match="NaN or Inf"):
        dataset_spectra(torch.tensor([[1.0, float("inf")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="N=1"):
        dataset_spectra(torch.randn(1, 4))
