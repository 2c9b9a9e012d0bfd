"""Exact kNN, overlap, rank displacement and distance correlation against plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from src.metrics import neighbors
from src.metrics.neighbors import (
    distance_correlation,
    knn,
    knn_overlap,
    knn_overlap_chance,
    knn_overlap_ci,
    mutual_knn,
    neighbor_ranks,
    neighborhood_mean_ci,
    pairwise_distances,
    rank_displacement,
    rank_displacement_chance,
    sample_pairs,
)
from src.metrics.stats import bootstrap_ci

# ---------------------------------------------------------------------------------------------
# plain references: full distance matrix, argsort with the index as tie-break
# ---------------------------------------------------------------------------------------------


def ref_distances(x: torch.Tensor, metric: str) -> np.ndarray:
    """Full (N, N) float64 distance matrix, self at +inf, with the module's duplicate rule.

    Distances are computed between distinct rows only and expanded to their copies, so copies
    are interchangeable; copies of one row are at exactly 0; everything is clamped at 0.
    """
    u, inv = np.unique(x.double().numpy(), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    if metric == "cos":
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        du = 1.0 - u @ u.T
    else:
        du = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(du, 0.0)
    d = np.maximum(du, 0.0)[inv][:, inv]
    np.fill_diagonal(d, np.inf)
    return d


def ref_order(d: np.ndarray) -> np.ndarray:
    """Each row's columns in (distance, index) order. (N, N) -> (N, N)."""
    cols = np.arange(d.shape[1])
    return np.stack([np.lexsort((cols, row)) for row in d])


def ref_knn(x: torch.Tensor, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    d = ref_distances(x, metric)
    idx = ref_order(d)[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def tie_heavy(n: int = 90, seed: int = 0) -> torch.Tensor:
    """Small integer points: many exact duplicates and exactly equal (integer) l2 distances."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, 4), generator=g).float()


def duplicated(n_base: int = 30, copies: int = 4, d: int = 6, seed: int = 0) -> torch.Tensor:
    """Random points, each repeated `copies` times in a shuffled order (exact ties under cos)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_base, d, generator=g)
    return base[torch.randperm(n_base * copies, generator=g) % n_base]


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cos", "l2"])
@pytest.mark.parametrize("symmetric", [False, True, None])
@pytest.mark.parametrize("block_size", [1, 7, 64, 500, None])
@pytest.mark.parametrize("gemm_columns", [7, 512], ids=["chunked_gemm", "one_gemm"])
def test_knn_matches_reference(metric, symmetric, block_size, gemm_columns, monkeypatch):
    # gemm_columns 7: each CPU GEMM in column chunks of 7, the last one shorter (120 = 17 x 7 + 1)
    monkeypatch.setattr(neighbors, "_GEMM_COLUMNS", gemm_columns)
    x = torch.randn(120, 16, generator=torch.Generator().manual_seed(1))
    d, i = knn(x, 10, metric=metric, block_size=block_size, symmetric=symmetric)
    rd, ri = ref_knn(x, 10, metric)
    assert d.shape == (120, 10) and i.dtype == torch.int64
    np.testing.assert_array_equal(i.numpy(), ri)
    np.testing.assert_allclose(d.numpy(), rd, rtol=1e-5, atol=1e-5)


def test_default_block_keeps_one_block_within_its_budget():
    from src.metrics.neighbors import SLAB_ELEMENTS, default_block_size

    assert default_block_size(20_000) == 1024
    for n in (40_000, 100_000, 500_000):
        assert default_block_size(n) * n <= SLAB_ELEMENTS < (default_block_size(n) + 1) * n
    assert default_block_size(10_000_000) == 64  # the floor: GEMMs of fewer rows waste the CPU


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("block_size", [1, 5, 32, 90])
@pytest.mark.parametrize("distinct", [False, True], ids=["with_copies", "distinct"])
def test_exact_ties_break_by_index_for_every_block_size(symmetric, block_size, distinct):
    # Integer points, l2: every distance is an exact small integer, so ties at the k-th distance
    # are everywhere and the (distance, index) rule alone decides. Exact in any summation order.
    # Copies make the symmetric search fall back to row blocks; distinct points keep it.
    x = tie_heavy(200)
    if distinct:  # each point once, in a shuffled order
        u = torch.unique(x, dim=0)
        x = u[torch.randperm(len(u), generator=torch.Generator().manual_seed(0))]
    d, i = knn(x, 12, metric="l2", block_size=block_size, symmetric=symmetric)
    rd, ri = ref_knn(x, 12, "l2")
    np.testing.assert_array_equal(i.numpy(), ri)
    np.testing.assert_array_equal(d.numpy(), rd)
    again = knn(x, 12, metric="l2", block_size=block_size, symmetric=symmetric)[1]
    assert torch.equal(i, again)


@pytest.mark.parametrize("e", [8 * 40, 8 * 40 + 5, 1003])
@pytest.mark.parametrize("k", [1, 10])
def test_row_topk_takes_the_k_largest(e, k):
    from src.metrics.neighbors import row_topk

    g = torch.Generator().manual_seed(e + k)
    ties = torch.randint(0, 6, (30, e), generator=g).float()  # ties everywhere
    spread = torch.randn(30, e, generator=g)
    spread[:, 3] = -torch.inf  # the searches' excluded self
    for scores in (ties, spread):
        v, i = row_topk(scores, k)
        assert v.shape == i.shape == (30, k)
        assert torch.equal(scores.gather(1, i), v)  # columns and values agree
        assert (i.sort(dim=1).values.diff(dim=1) > 0).all()  # k distinct columns
        plain = scores.topk(k, dim=1).values
        assert torch.equal(v.sort(dim=1, descending=True).values, plain)


@pytest.mark.parametrize(
    ("shape", "share"),
    [((37, 64), 0.01), ((256, 1024), 0.003), ((5, 8), 0.5), ((3, 7), 0.3), ((2, 8), 0.0),
     ((16, 16), 1.0)],
)  # fmt: skip
def test_sparse_nonzero_is_nonzero(shape, share):
    from src.metrics.neighbors import sparse_nonzero

    mask = torch.rand(shape, generator=torch.Generator().manual_seed(shape[0])) < share
    rows, cols = sparse_nonzero(mask)
    ref_rows, ref_cols = mask.nonzero(as_tuple=True)
    assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)
    rows_t, cols_t = sparse_nonzero(mask.T)  # not contiguous: the plain path
    assert torch.equal(rows_t, ref_cols.sort(stable=True).values)
    assert torch.equal(torch.stack([rows_t, cols_t]), torch.stack(mask.T.nonzero(as_tuple=True)))


@pytest.mark.parametrize("points", ["integer", "gaussian"])
def test_symmetric_search_with_grouped_selection_matches_reference(points):
    # Rows of 320+ columns at k = 6 take row_topk's grouped path (the small tests above do not).
    g = torch.Generator().manual_seed(4)
    if points == "integer":  # distinct integer points: exact distance ties everywhere
        u = torch.unique(tie_heavy(3000, seed=4), dim=0)
        x = u[torch.randperm(len(u), generator=g)]
    else:
        x = torch.randn(900, 8, generator=g)
    for block_size in (64, 333):
        d, i = knn(x, 6, metric="l2", block_size=block_size, symmetric=True)
        rd, ri = ref_knn(x, 6, "l2")
        np.testing.assert_array_equal(i.numpy(), ri)
        np.testing.assert_allclose(d.numpy(), rd, rtol=1e-5, atol=1e-5)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def blas_threads(request):
    """Run a test under one and under two BLAS threads (rounding may depend on the split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("metric", ["cos", "l2"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("block_size", [1, 7, 64, 120])
@pytest.mark.parametrize(("n_base", "copies", "d"), [(30, 4, 6), (10, 3, 1280)])
def test_duplicate_points_tie(blas_threads, metric, symmetric, block_size, n_base, copies, d):
    # The guarantee (module docstring): copies of a point are at distance exactly 0 and every
    # point is at one distance from all copies of another, under any thread count or block
    # size. One-row blocks at D = 1280 are GEMV calls that round copies apart without it.
    for seed in range(3):
        x = duplicated(n_base, copies, d, seed)
        k = copies + 1  # own copies, then a tie among the copies of the next point
        dist, i = knn(x, k, metric=metric, block_size=block_size, symmetric=symmetric)
        _, ri = ref_knn(x, k, metric)
        np.testing.assert_array_equal(i.numpy(), ri)
        assert (dist[:, : copies - 1] == 0).all()
        assert (i[:, : copies - 1].diff(dim=1) > 0).all()
        assert (dist[:, copies - 1] == dist[:, copies]).all()  # the next point's copies tie
        ranks = neighbor_ranks(x, i, metric=metric, block_size=block_size)
        assert torch.equal(ranks, torch.arange(1, k + 1).expand_as(ranks))


def test_prefix_of_a_larger_search_is_the_smaller_search():
    x = tie_heavy(seed=3)
    _, i20 = knn(x, 20, metric="l2")
    _, i5 = knn(x, 5, metric="l2")
    assert torch.equal(i20[:, :5], i5)


def test_self_is_excluded_and_smallest_n():
    x = torch.randn(11, 3, generator=torch.Generator().manual_seed(0))
    _, i = knn(x, 10)  # N = k + 1: every other point is a neighbour
    assert not (i == torch.arange(11).unsqueeze(1)).any()
    assert all(set(row.tolist()) == set(range(11)) - {r} for r, row in enumerate(i))


def test_half_precision_input_is_accumulated_in_float32():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    d, i = knn(x.half(), 5)
    assert d.dtype == torch.float32
    assert torch.equal(i, knn(x.half().float(), 5)[1])


def test_pairwise_distances_conventions():
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = pairwise_distances(x, x, "l2").numpy()
    ref = ref_distances(x, "l2")
    np.fill_diagonal(ref, 0)
    np.testing.assert_allclose(d, ref, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(0))
    for metric in ("cos", "l2"):
        d, i = knn(x, 10, metric=metric)
        dc, ic = knn(x.cuda(), 10, metric=metric)
        assert ic.device.type == "cuda"
        assert torch.equal(i, ic.cpu())
        torch.testing.assert_close(d, dc.cpu(), rtol=1e-5, atol=1e-5)
    _, i = knn(tie_heavy(), 12, metric="l2")
    assert torch.equal(i, knn(tie_heavy().cuda(), 12, metric="l2")[1].cpu())


# ---------------------------------------------------------------------------------------------
# overlap
# ---------------------------------------------------------------------------------------------


def test_overlap_matches_set_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.stack([torch.randperm(40, generator=g)[:8] for _ in range(50)])
    b = torch.stack([torch.randperm(40, generator=g)[:8] for _ in range(50)])
    ref = [len(set(ra.tolist()) & set(rb.tolist())) / 8 for ra, rb in zip(a, b, strict=True)]
    np.testing.assert_allclose(knn_overlap(a, b).numpy(), ref)


@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_overlap_with_itself_and_a_rotated_copy_is_one(metric):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 24, dtype=torch.float64, generator=g)
    rot = torch.linalg.qr(torch.randn(24, 24, dtype=torch.float64, generator=g))[0]
    _, a = knn(x, 10, metric=metric)
    for y in (x, x @ rot, 3.5 * x @ rot):
        assert (knn_overlap(a, knn(y, 10, metric=metric)[1]) == 1).all()


def test_cos_overlap_ignores_per_row_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 12, dtype=torch.float64, generator=g)
    scale = torch.rand(150, 1, dtype=torch.float64, generator=g) * 10 + 0.1
    assert (mutual_knn(x, x * scale, 10) == 1).all()


def _coverage(planted: bool, n: int = 300, k: int = 10, d: int = 16, seeds: int = 300):
    """Coverage of the nominal 95% CIs over seeded replicates of two spaces of n images.

    Independent spaces: the true mean overlap is chance, k/(n-1), exactly, and the true mean
    rank displacement rank_displacement_chance(n, k). Planted (y = x + noise): the true mean
    overlap is estimated by the mean over the replicates (its own error is sd/sqrt(seeds)).
    -> (overlap HAC, overlap i.i.d. bootstrap, displacement HAC) coverages.
    """
    means, cis, boot, disp_hits = [], [], [], 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny searches: thread hand-offs would dominate
    try:
        for seed in range(seeds):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(n, d, generator=g)
            y = x + torch.randn(n, d, generator=g) if planted else torch.randn(n, d, generator=g)
            na, nb = knn(x, k)[1], knn(y, k)[1]
            ov = knn_overlap(na, nb)
            means.append(float(ov.mean()))
            cis.append(knn_overlap_ci(na, nb))
            boot.append(bootstrap_ci(ov, n_boot=200, seed=seed))
            if not planted:
                disp = rank_displacement(neighbor_ranks(y, na))
                lo, hi = neighborhood_mean_ci(disp, na, nb)
                disp_hits += lo <= rank_displacement_chance(n, k) <= hi
    finally:
        torch.set_num_threads(threads)
    truth = float(np.mean(means)) if planted else knn_overlap_chance(n, k)
    cover = np.mean([lo <= truth <= hi for lo, hi in cis])
    cover_boot = np.mean([lo <= truth <= hi for lo, hi in boot])
    return cover, cover_boot, disp_hits / seeds


def test_overlap_ci_covers_chance_at_the_nominal_rate():
    # Measured when written (300 replicates, N=300, k=10): 95.3% for the overlap, 93.3% for
    # rank displacement, against 85% / 81% for the i.i.d. bootstrap over images that ignores
    # shared neighbourhoods. 300 replicates: a binomial sd of 1.3 points around 95%.
    cover, cover_boot, cover_disp = _coverage(planted=False)
    print(f"coverage of chance: overlap {cover:.3f} (iid bootstrap {cover_boot:.3f}), "
          f"rank displacement {cover_disp:.3f}")  # fmt: skip
    assert 0.92 <= cover <= 0.98, f"overlap CI covered chance in {cover:.1%} of replicates"
    assert 0.90 <= cover_disp <= 0.98, f"displacement CI coverage {cover_disp:.1%}"
    assert cover_boot < 0.90, "the i.i.d. bootstrap was expected to be too narrow here"


def test_overlap_ci_covers_a_planted_value():
    # Measured when written (200 replicates): 93.0% (i.i.d. bootstrap 80.0%).
    cover, cover_boot, _ = _coverage(planted=True, seeds=200)
    print(f"coverage of the planted value: overlap {cover:.3f} (iid bootstrap {cover_boot:.3f})")
    assert 0.90 <= cover <= 0.98, f"overlap CI covered the planted value in {cover:.1%}"


def test_mutual_knn_is_cos_overlap():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 8, generator=g), torch.randn(80, 5, generator=g)
    expected = knn_overlap(knn(x, 7, metric="cos")[1], knn(y, 7, metric="cos")[1])
    assert torch.equal(mutual_knn(x, y, 7), expected)


# ---------------------------------------------------------------------------------------------
# ranks and rank displacement
# ---------------------------------------------------------------------------------------------


def ref_ranks(x: torch.Tensor, nbrs: torch.Tensor, metric: str) -> np.ndarray:
    order = ref_order(ref_distances(x, metric))
    rank_of = np.empty_like(order)
    rows = np.arange(order.shape[0])[:, None]
    rank_of[rows, order] = np.arange(1, order.shape[1] + 1)  # self (inf) is last: rank N
    return np.take_along_axis(rank_of, nbrs.numpy(), 1)


@pytest.mark.parametrize("block_size", [1, 16, 200])
def test_ranks_match_reference(block_size):
    g = torch.Generator().manual_seed(2)
    xa, xb = torch.randn(100, 6, generator=g), torch.randn(100, 9, generator=g)
    _, nbrs_a = knn(xa, 15, metric="l2")
    ranks = neighbor_ranks(xb, nbrs_a, metric="l2", block_size=block_size)
    np.testing.assert_array_equal(ranks.numpy(), ref_ranks(xb, nbrs_a, "l2"))
    pos = np.arange(1, 16)
    np.testing.assert_allclose(
        rank_displacement(ranks).numpy(), np.abs(ref_ranks(xb, nbrs_a, "l2") - pos).mean(1)
    )


@pytest.mark.parametrize("block_size", [3, 90])
def test_ranks_with_exact_ties_follow_the_index_rule(block_size):
    xa, xb = tie_heavy(seed=0), tie_heavy(seed=1)
    _, nbrs_a = knn(xa, 12, metric="l2")
    ranks = neighbor_ranks(xb, nbrs_a, metric="l2", block_size=block_size)
    np.testing.assert_array_equal(ranks.numpy(), ref_ranks(xb, nbrs_a, "l2"))


def test_a_space_has_zero_displacement_from_itself():
    x = tie_heavy(seed=4)
    _, nbrs = knn(x, 12, metric="l2")
    ranks = neighbor_ranks(x, nbrs, metric="l2", block_size=17)
    assert torch.equal(ranks, torch.arange(1, 13).expand(90, 12))
    assert (rank_displacement(ranks) == 0).all()


def test_rank_displacement_chance_matches_brute_force():
    n, k = 30, 4
    u = np.arange(1, n)
    brute = np.mean([np.abs(u - r).mean() for r in range(1, k + 1)])
    assert rank_displacement_chance(n, k) == pytest.approx(brute)


# ---------------------------------------------------------------------------------------------
# pairs and distance correlation
# ---------------------------------------------------------------------------------------------


def test_sample_pairs_all_and_subsampled():
    i, j = sample_pairs(7, 10_000)
    expected = [(a, b) for a in range(7) for b in range(a + 1, 7)]
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == expected
    i, j = sample_pairs(5000, 3000, seed=1)
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 3000
    assert (i < j).all() and (i >= 0).all() and (j < 5000).all()
    i2, j2 = sample_pairs(5000, 3000, seed=1)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)


@pytest.mark.parametrize("metric", ["cos", "l2"])
def test_distance_correlation_matches_explicit_pairs(metric):
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(60, 5, dtype=torch.float64, generator=g)
    xb = xa + 0.5 * torch.randn(60, 5, dtype=torch.float64, generator=g)
    out = distance_correlation(xa, xb, metric=metric, n_pairs=500, seed=3)
    i, j = sample_pairs(60, 500, seed=3)
    da, db = ref_distances(xa, metric)[i, j], ref_distances(xb, metric)[i, j]
    if metric == "l2":
        da, db = np.sqrt(da), np.sqrt(db)  # correlation uses Euclidean, not squared
    assert out["n_pairs"] == 500
    assert out["pearson"] == pytest.approx(stats.pearsonr(da, db).statistic, abs=1e-10)
    assert out["spearman"] == pytest.approx(stats.spearmanr(da, db).statistic, abs=1e-10)
    same = distance_correlation(xa, 2 * xa, metric=metric, n_pairs=500)
    assert same["pearson"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        knn(torch.cat([x, torch.tensor([[float("nan"), 0, 0, 0]])]), 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        knn(torch.cat([x, torch.tensor([[float("inf"), 0, 0, 0]])]), 3)
    with pytest.raises(ValueError, match="k=20 needs at least k\\+1=21 points"):
        knn(x, 20)
    with pytest.raises(ValueError, match="empty"):
        knn(torch.zeros(0, 4), 3)
    with pytest.raises(ValueError, match="empty"):
        knn(torch.zeros(5, 0), 3)
    with pytest.raises(ValueError, match="2-D"):
        knn(torch.zeros(5), 3)
    with pytest.raises(ValueError, match="all-zero rows"):
        knn(torch.cat([x, torch.zeros(1, 4)]), 3, metric="cos")
    with pytest.raises(ValueError, match="unknown metric"):
        knn(x, 3, metric="manhattan")
    with pytest.raises(ValueError, match="positive integer"):
        knn(x, 0)
    with pytest.raises(ValueError, match="mismatched N"):
        mutual_knn(x, torch.randn(19, 4), 3)
    with pytest.raises(ValueError, match="mismatched N"):
        knn_overlap(knn(x, 3)[1], knn(x[:15], 3)[1])
    with pytest.raises(ValueError, match="different k"):
        knn_overlap(knn(x, 3)[1], knn(x, 4)[1])
    with pytest.raises(ValueError, match="mismatched N"):
        neighbor_ranks(x[:15], knn(x, 3)[1])
    with pytest.raises(ValueError, match="self"):
        neighbor_ranks(x, torch.arange(20).unsqueeze(1))
    with pytest.raises(ValueError, match="mismatched N"):
        distance_correlation(x, x[:10])
    with pytest.raises(ValueError, match="empty"):
        knn_overlap(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long))
