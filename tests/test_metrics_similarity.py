"""CKA (linear feature-space, Gram, RBF; biased and unbiased) against explicit-Gram references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.metrics.similarity import (
    center_gram,
    kernel_cka,
    linear_cka,
    linear_cka_permutation_test,
    linear_cka_permutation_tests,
    linear_hsic,
    permutation_test,
    rbf_cka,
    rbf_cka_permutation_test,
    rbf_gram,
)

# ---------------------------------------------------------------------------------------------
# plain references: Gram matrices, a dense centring matrix H, Song et al.'s formula verbatim
# ---------------------------------------------------------------------------------------------


def ref_hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2


def ref_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return float(
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def ref_cka(k: np.ndarray, l: np.ndarray, unbiased: bool) -> float:  # noqa: E741
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    return h(k, l) / np.sqrt(h(k, k) * h(l, l))


def ref_rbf(x: np.ndarray) -> np.ndarray:
    d2 = np.array([[((a - b) ** 2).sum() for b in x] for a in x])
    off = d2[np.triu_indices(len(x), 1)]
    med = np.sort(off)[(len(off) - 1) // 2]  # lower median
    return np.exp(-d2 / (2 * med))


def data(n: int = 40, dx: int = 12, dy: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, dtype=torch.float64, generator=g) + 3.0  # offsets: centring matters
    y = x[:, :dy] @ torch.randn(dy, dy, dtype=torch.float64, generator=g) + 0.5 * torch.randn(
        n, dy, dtype=torch.float64, generator=g
    )
    return x, y


# ---------------------------------------------------------------------------------------------
# linear CKA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_matches_explicit_gram_reference(unbiased):
    x, y = data()
    xn, yn = x.numpy(), y.numpy()
    # the reference uses the raw (uncentred) Gram matrices: H, or the unbiased estimator's
    # translation invariance, takes care of the offsets
    expected = ref_cka(xn @ xn.T, yn @ yn.T, unbiased)
    assert linear_cka(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    assert kernel_cka(x @ x.T, y @ y.T, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    assert linear_hsic(x, y, unbiased=unbiased) == pytest.approx(h(xn @ xn.T, yn @ yn.T), rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_wide_features_use_blocked_self_terms_and_still_match(unbiased):
    # D = 300 > the 128-column blocks of the symmetric self-term product, last block partial
    g = torch.Generator().manual_seed(11)
    x = torch.randn(24, 300, dtype=torch.float64, generator=g)
    y = x[:, :200] + torch.randn(24, 200, dtype=torch.float64, generator=g)
    xn, yn = x.numpy(), y.numpy()
    expected = ref_cka(xn @ xn.T, yn @ yn.T, unbiased)
    assert linear_cka(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)
    assert linear_cka(y, x, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)


def test_center_gram_is_hkh():
    k = torch.randn(9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = torch.eye(9, dtype=torch.float64) - 1 / 9
    torch.testing.assert_close(center_gram(k), h @ k @ h)


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_invariances(unbiased):
    x, y = data(seed=1)
    g = torch.Generator().manual_seed(9)
    q = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=g))[0]
    base = linear_cka(x, y, unbiased=unbiased)
    assert linear_cka(x, x, unbiased=unbiased) == pytest.approx(1.0)
    assert linear_cka(x @ q, y, unbiased=unbiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(4.2 * x, 0.01 * y, unbiased=unbiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x - 100.0, y + 7.0, unbiased=unbiased) == pytest.approx(base, rel=1e-8)
    assert linear_cka(y, x, unbiased=unbiased) == pytest.approx(base, rel=1e-12)


def test_float32_input_is_computed_in_float64():
    x, y = data(seed=2)
    assert linear_cka(x.float(), y.float()) == pytest.approx(
        linear_cka(x.float().double(), y.float().double()), rel=1e-12
    )


def test_unbiased_cka_of_independent_gaussians_is_near_zero_where_biased_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 400, generator=g, dtype=torch.float64)
    y = torch.randn(30, 400, generator=g, dtype=torch.float64)
    biased, unbiased = linear_cka(x, y), linear_cka(x, y, unbiased=True)
    assert biased > 0.8  # small N, large d: the biased estimator is badly inflated
    assert abs(unbiased) < 0.05


# ---------------------------------------------------------------------------------------------
# RBF CKA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_cka_matches_reference(unbiased):
    x, y = data(n=25)
    np.testing.assert_allclose(rbf_gram(x).numpy(), ref_rbf(x.numpy()), rtol=1e-10, atol=1e-12)
    expected = ref_cka(ref_rbf(x.numpy()), ref_rbf(y.numpy()), unbiased)
    assert rbf_cka(x, y, unbiased=unbiased) == pytest.approx(expected, rel=1e-9)


def test_rbf_cka_properties_and_subsampling():
    x, y = data(n=60, seed=3)
    g = torch.Generator().manual_seed(4)
    q = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=g))[0]
    assert rbf_cka(x, x) == pytest.approx(1.0)
    # the median bandwidth makes RBF CKA invariant to rotations and isotropic scaling
    assert rbf_cka(3.0 * x @ q, y) == pytest.approx(rbf_cka(x, y), rel=1e-9)
    sub = rbf_cka(x, y, max_n=30, seed=5)
    assert sub == rbf_cka(x, y, max_n=30, seed=5)
    assert sub != rbf_cka(x, y, max_n=30, seed=6)
    assert sub != rbf_cka(x, y)


# ---------------------------------------------------------------------------------------------
# permutation null
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("unbiased", [False, True])
def test_fast_linear_null_equals_the_generic_one(unbiased):
    x, y = data(n=30, seed=6)
    fast = linear_cka_permutation_test(x, y, unbiased=unbiased, n_perm=40, seed=2)
    slow = permutation_test(
        lambda a, b: linear_cka(a, b, unbiased=unbiased), x, y, n_perm=40, seed=2
    )
    assert fast.observed == pytest.approx(slow.observed, rel=1e-12)
    # the biased null's permuted products run in float32 (_gram_null_cross): 1e-6 in CKA
    atol = 1e-12 if unbiased else 1e-6
    torch.testing.assert_close(fast.null, slow.null, rtol=0, atol=atol)
    assert fast.p_value == slow.p_value


@pytest.mark.parametrize("unbiased", [False, True])
def test_gram_and_feature_space_nulls_agree(unbiased):
    # The two exact forms of the permuted cross term: N x N Gram (<K_c, P^T L_c P>) and feature
    # space (||Y_c^T P X_c||^2), on data where each form is the one the cost rule would pick.
    from src.metrics.similarity import _linear_tests

    for n, dx, dy in ((30, 40, 50), (200, 3, 4)):
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, dx, dtype=torch.float64, generator=g)
        y = x[:, :1].repeat(1, dy) + torch.randn(n, dy, dtype=torch.float64, generator=g)
        (gram,) = _linear_tests(x, y, (unbiased,), 25, 3, torch.float64, gram=True)
        (feat,) = _linear_tests(x, y, (unbiased,), 25, 3, torch.float64, gram=False)
        # the Gram form runs in float32 (src.metrics.similarity._gram_null_cross): 1e-6 in CKA
        torch.testing.assert_close(gram.null, feat.null, rtol=0, atol=1e-6)
        assert gram.p_value == feat.p_value
        slow = permutation_test(
            lambda a, b: linear_cka(a, b, unbiased=unbiased), x, y, n_perm=25, seed=3
        )
        torch.testing.assert_close(
            linear_cka_permutation_test(x, y, unbiased=unbiased, n_perm=25, seed=3).null,
            slow.null,
            rtol=0,
            atol=1e-6,
        )


def test_both_linear_nulls_at_once_equal_each_alone():
    x, y = data(n=40, seed=11)
    both = linear_cka_permutation_tests(x, y, n_perm=30, seed=4)
    for t, unbiased in zip(both, (False, True), strict=True):
        alone = linear_cka_permutation_test(x, y, unbiased=unbiased, n_perm=30, seed=4)
        assert t.observed == alone.observed and t.p_value == alone.p_value
        assert torch.equal(t.null, alone.null)


def test_permutation_p_values_tell_signal_from_chance():
    x, y = data(n=50, seed=7)
    related = linear_cka_permutation_test(x, y, n_perm=99)
    assert related.p_value == pytest.approx(1 / 100)  # nothing in the null beats real pairing
    g = torch.Generator().manual_seed(8)
    noise = torch.randn(50, 7, dtype=torch.float64, generator=g)
    unrelated = linear_cka_permutation_test(x, noise, n_perm=99)
    assert unrelated.p_value > 0.05
    n_ge = int((unrelated.null >= unrelated.observed).sum())
    assert unrelated.p_value == (n_ge + 1) / 100


@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_null_reuses_grams_and_matches_generic(unbiased):
    x, y = data(n=30, seed=9)
    fast = rbf_cka_permutation_test(x, y, unbiased=unbiased, n_perm=30, seed=0)
    # the RBF null draws its permutations with seed + 1 (seed is for the subsample)
    slow = permutation_test(lambda a, b: rbf_cka(a, b, unbiased=unbiased), x, y, n_perm=30, seed=1)
    assert fast.observed == pytest.approx(slow.observed, rel=1e-12)
    # the permuted products run in float32 (_gram_null_cross): 1e-6 in CKA
    torch.testing.assert_close(fast.null, slow.null, rtol=0, atol=1e-6)
    assert fast.p_value == slow.p_value


def test_unbiased_hsic_ignores_a_constant_off_the_diagonal():
    # what the unbiased RBF null's shift (_off_diagonal_sum_zero) relies on
    from src.metrics.similarity import _gram_hsic_unbiased, _off_diagonal_sum_zero, _zero_diag

    x, y = data(n=25, seed=13)
    kt, lt = _zero_diag(rbf_gram(x)), _zero_diag(rbf_gram(y))
    ks = _off_diagonal_sum_zero(kt)
    assert float(ks.sum()) == pytest.approx(0.0, abs=1e-12)
    assert torch.equal(ks.diagonal(), torch.zeros(25, dtype=ks.dtype))
    h = float(_gram_hsic_unbiased(kt, lt))
    assert float(_gram_hsic_unbiased(ks, lt)) == pytest.approx(h, rel=1e-10)
    assert float(_gram_hsic_unbiased(ks, _off_diagonal_sum_zero(lt))) == pytest.approx(h, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    x, y = data()
    with pytest.raises(ValueError, match="mismatched N"):
        linear_cka(x, y[:-1])
    with pytest.raises(ValueError, match="mismatched N"):
        rbf_cka(x[:5], y)
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        linear_cka(bad, y)
    bad[3, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        linear_cka_permutation_test(x, bad, n_perm=3)
    with pytest.raises(ValueError, match="empty"):
        linear_cka(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="N >= 4"):
        linear_cka(x[:3], y[:3], unbiased=True)
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(torch.ones(10, 3), y[:10])
    with pytest.raises(ValueError, match="n_perm"):
        permutation_test(linear_cka, x, y, n_perm=0)
    with pytest.raises(ValueError, match="Gram"):
        kernel_cka(torch.eye(3), torch.eye(4))


# ---------------------------------------------------------------------------------------------
# the fast paths against plain references (bench/bench_geometry.py, bench/bench_nulls.py)
# ---------------------------------------------------------------------------------------------


# N = 23 rows: Dx + Dy = 12 and 2 take the D x D product, 57 and 97 the two N x N Gram matrices
@pytest.mark.parametrize("dx, dy, block", [(7, 5, 3), (40, 17, 512), (33, 64, 16), (1, 1, 4)])
def test_joint_frobenius_equals_three_full_products(dx, dy, block, monkeypatch):
    import src.metrics.similarity as sim

    g = torch.Generator().manual_seed(dx * 100 + dy)
    x = torch.randn(23, dx, generator=g) * 3 + 1  # float32 in: centred and cast in one pass
    y = torch.randn(23, dy, dtype=torch.float64, generator=g)
    z = sim._centred_joint(x, y, torch.float64)
    xc, yc = x.double() - x.double().mean(0), y - y.mean(0)
    torch.testing.assert_close(z, torch.cat([xc, yc], 1), rtol=0, atol=1e-14)
    refs = [(xc.T @ xc).square().sum(), (yc.T @ xc).square().sum(), (yc.T @ yc).square().sum()]
    syrk = sim._joint_frobenius(z, dx, block)  # CPU: one BLAS syrk
    monkeypatch.setattr(sim, "_upper_gram", lambda z, block: sim._upper_gram_blocked(z, block))
    blocked = sim._joint_frobenius(z, dx, block)  # the GPU path's column blocks
    for got in (syrk, blocked):
        for value, ref in zip(got, refs, strict=True):
            assert float(value) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["c", "fortran", "strided"])
def test_upper_gram_is_the_upper_triangle_of_the_full_product(dtype, layout):
    from src.metrics.similarity import _upper_gram_blocked, _upper_gram_syrk

    base = torch.randn(31, 26, dtype=dtype, generator=torch.Generator().manual_seed(3))
    z = {"c": base[:, :13], "fortran": base.T.contiguous().T[:, :13], "strided": base[::2, ::2]}
    z = z[layout]
    ref = torch.triu(z.double().T @ z.double())
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    for got in (_upper_gram_syrk(z), _upper_gram_blocked(z, 4)):
        assert got.dtype == dtype and got.shape == (13, 13)
        assert torch.equal(got.tril(-1), torch.zeros_like(got))  # nothing below the diagonal
        torch.testing.assert_close(got.double(), ref, **tol)


def test_upper_gram_syrk_runs_on_torchs_thread_count(monkeypatch):
    import src.metrics.similarity as sim

    seen = []
    real = sim._blas().limit

    def limit(**kw):
        seen.append(kw)
        return real(**kw)

    monkeypatch.setattr(sim._blas(), "limit", limit)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    sim._upper_gram_syrk(torch.randn(8, 3, dtype=torch.float64))
    assert seen == [{"limits": 1, "user_api": "blas"}]


def test_sym_gram_from_blocked_gemms_equals_the_syrk_one(monkeypatch):
    import src.metrics.similarity as sim

    a = torch.randn(37, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    syrk = sim._sym_gram(a, block=8)
    monkeypatch.setattr(sim, "_upper_gram", lambda z: sim._upper_gram_blocked(z, 4))
    blocked = sim._sym_gram(a, block=8)  # the path off CPU: row-major already
    assert blocked.is_contiguous() and torch.equal(blocked, blocked.T)
    torch.testing.assert_close(blocked, syrk, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("block", [1, 5, 36, 37, 64])
def test_mirrored_gram_and_permuted_gram_products_equal_plain_references(block):
    from src.metrics.similarity import _gram_null_batched, _gram_null_blocked, _sym_gram

    g = torch.Generator().manual_seed(5)
    a = torch.randn(37, 6, dtype=torch.float64, generator=g)
    b = torch.randn(37, 4, dtype=torch.float64, generator=g)
    k, l = _sym_gram(a, block=8), _sym_gram(b, block=5)  # noqa: E741
    torch.testing.assert_close(k, a @ a.T, rtol=1e-13, atol=1e-13)
    assert torch.equal(k, k.T)  # mirrored, so exactly symmetric
    assert k.is_contiguous() and l.is_contiguous()  # row-major, for the row gathers below
    perms = [torch.randperm(37, generator=g) for _ in range(5)]
    ref = torch.stack([(k * l[p][:, p]).sum() for p in perms])
    scale = float((k.square().sum() * l.square().sum()).sqrt())
    # in float32: 1e-6 of the CKA denominator. Row blocks of the upper triangle (CPU): one
    # row, blocks that do not divide 37, the whole matrix in one and in a larger block
    got = _gram_null_blocked(k.float(), l.float(), perms, block)
    assert got.dtype == torch.float64 and got.shape == (5,)
    assert float((got - ref).abs().max()) <= 1e-6 * scale
    # whole matrices for batches of permutations (GPUs): 2 + 2 + 1, and all 5 at once
    for size in (2, 5):
        batches = [torch.stack(perms[i : i + size]) for i in range(0, 5, size)]
        got = _gram_null_batched(k.float(), l.float(), batches)
        assert got.dtype == torch.float64 and got.shape == (5,)
        assert float((got - ref).abs().max()) <= 1e-6 * scale


@pytest.mark.parametrize("batch", [2, 7])
def test_linear_nulls_in_batches_of_permutations_equal_one_at_a_time(monkeypatch, batch):
    # Off CPU the permutations go through each null's steps in batches (_perm_batches); run
    # that path here, in batches that do not divide n_perm, against the per-permutation one.
    from src.metrics import similarity

    x, y = data(n=30, seed=12)
    one_at_a_time = similarity._linear_tests(x, y, (False, True), 11, 3, torch.float64, gram=False)

    def batches(perms, bytes_each, device):
        perms = list(perms)
        for i in range(0, len(perms), batch):
            yield torch.stack(perms[i : i + batch]).to(device)

    monkeypatch.setattr(similarity, "_perm_batches", batches)
    batched = similarity._linear_tests(x, y, (False, True), 11, 3, torch.float64, gram=False)
    for a, b in zip(one_at_a_time, batched, strict=True):
        torch.testing.assert_close(a.null, b.null, rtol=1e-12, atol=0)
        assert a.p_value == b.p_value
