"""SAE measures against plain references, and every SAE file format against a hand
encode/decode on tiny weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from src.errors import InputMissing
from src.metrics.sae import (
    TokenSums,
    active_features,
    dead_share,
    fvu,
    fvu_with_ci,
    l0,
    overlap_share,
)
from src.sae.coders import load_coder

D, F = 6, 10


def test_fvu_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    x, xh = torch.randn(20, D, generator=g), torch.randn(20, D, generator=g)
    mean = [sum(x[i, j].item() for i in range(20)) / 20 for j in range(D)]
    err = sum((x[i, j].item() - xh[i, j].item()) ** 2 for i in range(20) for j in range(D))
    var = sum((x[i, j].item() - mean[j]) ** 2 for i in range(20) for j in range(D))
    assert fvu(x, xh) == pytest.approx(err / var, rel=1e-9)
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)  # the mean explains nothing


def test_per_image_sums_give_the_pooled_fvu_and_a_ci_around_it():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(n, D, generator=g) + i for i, n in enumerate([3, 5, 2, 7])]
    hats = [x + 0.3 * torch.randn(x.shape, generator=g) for x in xs]
    sums = TokenSums.stack([TokenSums.of(x, h) for x, h in zip(xs, hats, strict=True)])
    assert sums.fvu() == pytest.approx(fvu(torch.cat(xs), torch.cat(hats)), rel=1e-9)
    # a resample with repeats is the FVU of the repeated rows
    idx = torch.tensor([0, 0, 3])
    want = fvu(torch.cat([xs[0], xs[0], xs[3]]), torch.cat([hats[0], hats[0], hats[3]]))
    assert sums.fvu(idx) == pytest.approx(want, rel=1e-9)
    ci = fvu_with_ci(sums, n_boot=200)
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"] and ci["n"] == 4


def test_l0_dead_and_overlap_counts():
    codes = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0], [0.5, 0.0, 0.0, 0.0]])
    assert l0(codes).tolist() == [2, 1, 1]
    act = active_features(codes)
    assert act.tolist() == [True, True, False, True]
    assert dead_share(act) == 0.25
    b = torch.tensor([True, False, True, False])
    assert overlap_share(act, b) == pytest.approx(1 / 3)
    assert np.isnan(overlap_share(torch.zeros(4, dtype=torch.bool), b))


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D, F, generator=g),
        "b_enc": torch.randn(F, generator=g) * 0.1,
        "W_dec": torch.randn(F, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
        "threshold": torch.rand(F, generator=g),
    }


def _x() -> torch.Tensor:
    return torch.randn(7, D, generator=torch.Generator().manual_seed(9))


def _hand(x, w, *, kind, sub, k=None):
    """The encoder written out row by row and feature by feature."""
    out = torch.zeros(x.shape[0], F)
    for i in range(x.shape[0]):
        xi = x[i] - w["b_dec"] if sub else x[i]
        pre = [float(xi @ w["W_enc"][:, f] + w["b_enc"][f]) for f in range(F)]
        if kind == "topk":
            keep = sorted(range(F), key=lambda f: -pre[f])[:k]
            vals = {f: max(pre[f], 0.0) for f in keep}
        elif kind == "jumprelu":
            vals = {f: p for f, p in enumerate(pre) if p > float(w["threshold"][f]) and p > 0}
        else:
            vals = {f: max(p, 0.0) for f, p in enumerate(pre)}
        for f, v in vals.items():
            out[i, f] = v
    return out


@pytest.mark.parametrize(
    "arch,sub,kind",
    [
        ("standard", True, "relu"),
        ("standard", False, "relu"),
        ("jumprelu", False, "jumprelu"),
        ("topk", True, "topk"),
    ],
)
def test_saelens_folder_encodes_and_decodes_as_by_hand(tmp_path, arch, sub, kind):
    w = _weights()
    cfg = {
        "architecture": arch,
        "d_in": D,
        "d_sae": F,
        "apply_b_dec_to_input": sub,
        "normalize_activations": "none",
        "activation_fn_kwargs": {"k": 3},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    tensors = {k: v for k, v in w.items() if k != "threshold" or arch == "jumprelu"}
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    coder = load_coder(tmp_path)
    x = _x()
    codes = coder.encode(x)
    torch.testing.assert_close(codes, _hand(x, w, kind=kind, sub=sub, k=3))
    torch.testing.assert_close(coder.decode(codes), codes @ w["W_dec"] + w["b_dec"])


def test_gemma_scope_params_npz(tmp_path):
    w = _weights(1)
    np.savez(tmp_path / "params.npz", **{k: v.numpy() for k, v in w.items()})
    coder = load_coder(tmp_path)
    x = _x() * 2
    codes = coder.encode(x)
    want = _hand(x, w, kind="jumprelu", sub=False)  # Gemma Scope subtracts nothing
    assert (want != 0).any() and (want == 0).any()
    torch.testing.assert_close(codes, want)
    torch.testing.assert_close(coder.reconstruct(x), want @ w["W_dec"] + w["b_dec"])


def test_sparsify_folder_matches_sparsify_and_the_hand_encoder(tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(D, SparseCoderConfig(num_latents=F, k=3))
    sae.b_dec.data = torch.randn(D)
    sae.encoder.bias.data = torch.randn(F) * 0.1
    sae.save_to_disk(tmp_path / "layers.2")
    coder = load_coder(tmp_path / "layers.2")
    x = _x()
    ref = sae.encode(x)
    dense = torch.zeros(x.shape[0], F).scatter_(1, ref.top_indices, ref.top_acts)
    codes = coder.encode(x)
    torch.testing.assert_close(codes, dense)
    w = {
        "W_enc": sae.encoder.weight.detach().T,
        "b_enc": sae.encoder.bias.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    torch.testing.assert_close(codes, _hand(x, w, kind="topk", sub=True, k=3))
    with torch.no_grad():
        torch.testing.assert_close(coder.decode(codes), sae.decode(ref.top_acts, ref.top_indices))
        torch.testing.assert_close(coder.reconstruct(x), sae(x).sae_out, rtol=1e-5, atol=1e-5)


def test_a_folder_without_an_sae_fails_clearly(tmp_path):
    with pytest.raises(InputMissing, match="no SAE found"):
        load_coder(tmp_path)
