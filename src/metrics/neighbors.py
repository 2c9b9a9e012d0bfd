"""Exact k-nearest-neighbour search and neighbourhood agreement between two spaces of one image set.

Conventions shared by every function here (DESIGN.md, "Metrics: definitions"):

- Rows are images: x is (N, D), row i of space A and row i of space B are the same image.
- metric "cos": distance 1 - <x_i/|x_i|, x_j/|x_j|>; metric "l2": squared Euclidean distance
  |x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, clamped at 0 (squared, so that the value we sort by is the
  value we return; take the square root for Euclidean distances, the order is the same).
- Self is excluded: N_k(i) never contains i (an exact duplicate of i is a neighbour at distance 0).
- Ties are broken by (distance, index): neighbours are sorted by distance, then by index, so results
  are deterministic and the first k' columns of a k-search are exactly the k'-search (k' < k).
  A tie is an exact equality of the computed distances (float32, or float64 for float64 input).
  Distances are clamped at 0 (both metrics).
- Exact duplicates (rows equal element for element) are interchangeable, whatever the BLAS,
  thread count, device or block size: the distance between two copies is exactly 0, and every
  point is at one and the same computed distance from all copies of another point. So an
  image's copies come first among its neighbours, in index order, and copies of a neighbour tie
  and follow the index rule. (A GEMM may round one inner product differently depending on the
  column's position in the tile and on the thread split; without this rule two copies can
  round apart, as single-row GEMV blocks at D = 1280 do with MKL.)
- Distinct points whose distances differ only by rounding are not ties: another device, BLAS,
  thread count or block size may round them, and so order such near-ties, differently.
- Memory is O(block_size x N): no N x N matrix is ever built. Computation runs on x's device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Metric = Literal["cos", "l2"]
METRICS: tuple[str, ...] = ("cos", "l2")

# --------------------------------------------------------------------------------------------
# validation and distance blocks
# --------------------------------------------------------------------------------------------


# Rows per pass of the row-wise passes (finiteness, squared norms): their temporaries are
# (ROW_CHUNK, D), not (N, D). Per-row sums do not depend on the chunking (bit-identical).
ROW_CHUNK = 4096


def row_sq_norms(x: Tensor) -> Tensor:
    """|x_i|^2 for x (N, D) -> (N,), row chunk by row chunk (ROW_CHUNK)."""
    return torch.cat([(c * c).sum(dim=1) for c in x.split(ROW_CHUNK)])


def check_features(x: Tensor, name: str = "x", *, finite: bool = True) -> None:
    """Raise ValueError unless x is a non-empty (N, D) tensor whose rows are all finite.

    finite=False skips the finiteness pass (a caller that checks its result instead).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: empty input, shape {tuple(x.shape)}")
    if finite and x.is_floating_point():
        bad = torch.cat([~torch.isfinite(c).all(dim=1) for c in x.split(ROW_CHUNK)])
        if bool(bad.any()):
            rows = bad.nonzero().flatten()
            raise ValueError(
                f"{name}: {rows.numel()} of {x.shape[0]} rows contain NaN or Inf "
                f"(first rows: {rows[:5].tolist()})"
            )


def check_same_n(n_a: int, n_b: int, what: str = "rows") -> None:
    """Raise ValueError unless both spaces describe the same number of images."""
    if n_a != n_b:
        raise ValueError(
            f"mismatched N between the two spaces: {n_a} vs {n_b} {what}; rows must be the same "
            "images in the same order"
        )


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n <= k:
        raise ValueError(f"k={k} needs at least k+1={k + 1} points (self is excluded), got N={n}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    # float32 accumulation at least (half inputs are upcast); float64 input stays float64.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare(
    x: Tensor, metric: str, name: str = "x"
) -> tuple[Tensor, Tensor | None, _Duplicates | None]:
    """Validated copy of x in the compute dtype: unit rows for cos, (x, |x|^2) for l2.

    x: (N, D) -> (N, D), squared norms (N,) for l2 (None for cos), and x's exact duplicate
    rows (None if there are none).
    """
    _check_metric(metric)
    check_features(x, name)
    xp = x.to(_compute_dtype(x)).contiguous()
    sq = row_sq_norms(xp)
    dups = _Duplicates.find(xp, sq)
    if metric == "cos":
        zero = sq == 0
        if bool(zero.any()):
            rows = zero.nonzero().flatten()
            raise ValueError(
                f"{name}: cosine distance is undefined for all-zero rows: {rows.numel()} rows "
                f"(first rows: {rows[:5].tolist()})"
            )
        norms = sq.sqrt().unsqueeze(1)
        # a copy made above (cast or contiguous) is normalised in place: no second (N, D) copy
        return (xp / norms if xp is x else xp.div_(norms)), None, dups
    return xp, sq, dups


class _Duplicates:
    """Groups of exactly equal rows, and how a distance block is made to respect them.

    copies (c,): rows that are a copy of an earlier row; rep (c,): that earliest row (the
    representative). pairs_i, pairs_j (P,): all ordered pairs i != j of rows in one group,
    sorted by i (P = sum over groups of size m of m (m - 1)).
    """

    def __init__(self, copies: Tensor, rep: Tensor, pairs_i: Tensor, pairs_j: Tensor) -> None:
        self.copies, self.rep, self.pairs_i, self.pairs_j = copies, rep, pairs_i, pairs_j

    @staticmethod
    def find(x: Tensor, sq: Tensor) -> _Duplicates | None:
        """Exact duplicate rows of x (N, D); sq (N,) = row sums of squares. None if none.

        Equal rows have equal sq, so only rows sharing their sq with another row are compared
        (exactly, torch.unique over those rows): O(N log N) on data without duplicates.
        """
        n = x.shape[0]
        order = sq.argsort(stable=True)
        ss = sq[order]
        same = ss[1:] == ss[:-1]
        if not bool(same.any()):
            return None
        cand_mask = torch.zeros(n, dtype=torch.bool, device=x.device)
        cand_mask[1:] |= same
        cand_mask[:-1] |= same
        cand = order[cand_mask].sort().values  # ascending row index
        _, inv, counts = torch.unique(x[cand], dim=0, return_inverse=True, return_counts=True)
        in_group = counts[inv] > 1
        if not bool(in_group.any()):
            return None
        rows, gid = cand[in_group], inv[in_group]
        # rows ascend, so a stable sort by group keeps each group's rows in index order
        gid, perm = gid.sort(stable=True)
        rows = rows[perm]
        first = torch.ones_like(gid, dtype=torch.bool)
        first[1:] = gid[1:] != gid[:-1]
        start = torch.cumsum(first.long(), 0) - 1  # group number 0..G-1 of each row
        heads = rows[first]  # representative (smallest index) of each group
        copies, rep = rows[~first], heads[start[~first]]
        # All ordered pairs within a group: row t of group g pairs with the size[g] rows of g
        # (rows[offs[g]:offs[g] + size[g]]), itself dropped afterwards.
        size = torch.bincount(start)
        offs = torch.cumsum(size, 0) - size
        reps = size[start]  # pairs contributed by each row
        pi = torch.repeat_interleave(rows, reps)
        seg = torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)  # segment starts
        local = torch.arange(pi.numel(), device=x.device) - seg
        pj = rows[torch.repeat_interleave(offs[start], reps) + local]
        keep = pi != pj
        pi, pj = pi[keep], pj[keep]
        o = pi.argsort(stable=True)
        return _Duplicates(copies, rep, pi[o], pj[o])

    def fix_columns(self, block: Tensor) -> None:
        """Give every copy's column the value of its representative's column, in place.

        block: (b, N) over all columns. Afterwards each row is at one distance from all copies.
        """
        block[:, self.copies] = block[:, self.rep]

    def rows_in(self, s: int, e: int) -> tuple[Tensor, Tensor]:
        """(block row r, column j) of the pairs whose first row s + r lies in [s, e)."""
        bounds = torch.tensor([s, e], device=self.pairs_i.device)
        lo, hi = torch.searchsorted(self.pairs_i, bounds).tolist()
        return self.pairs_i[lo:hi] - s, self.pairs_j[lo:hi]


def _scores(q: Tensor, x: Tensor, neg_x_sq: Tensor | None, out: Tensor) -> Tensor:
    """Nearness scores of the rows of x for each row of q, larger = nearer, written into out.

    q: (b, D), x: (m, D), neg_x_sq: -|x_j|^2 (m,) for l2, None for cos (rows already unit);
    out: contiguous (b, m). cos: <q_i, x_j>; l2: 2 <q_i, x_j> - |x_j|^2, which differs from
    -|q_i - x_j|^2 by a constant per row. The GEMM alone (_gemm_nt, the l2 bias folded in), no
    other pass: the row-block search ranks scores and turns only its k + 1 candidates into
    distances.
    """
    return _gemm_nt(q, x, out) if neg_x_sq is None else _gemm_nt(q, x, out, neg_x_sq, 2.0, 1.0)


# Columns per GEMM on CPU. MKL's sgemm ran 10-25% faster on (b, 512) outputs than on (b, 4096)
# or wider ones (2-core AMD EPYC, D = 1,024; the whole N = 20k search 8-15% faster at 512 than
# at 4096, same neighbours). Likely why, not profiled: a 512-row chunk of x (2 MB) stays in cache
# while the GEMM packs and uses it.
_GEMM_COLUMNS = 512


def _gemm_nt(
    q: Tensor,
    x: Tensor,
    out: Tensor,
    bias: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """out = alpha q x^T (+ beta bias_j on every row): q (b, D), x (m, D), bias (m,), out (b, m).

    On CPU in column chunks of _GEMM_COLUMNS, elsewhere one GEMM. (Like any blocking, the
    chunking may round an entry differently from another BLAS call's; see the module docstring.)
    """
    step = _GEMM_COLUMNS if x.device.type == "cpu" else max(x.shape[0], 1)
    for c0 in range(0, x.shape[0], step):
        c1 = min(c0 + step, x.shape[0])
        if bias is None:
            torch.mm(q, x[c0:c1].T, out=out[:, c0:c1])
        else:
            torch.addmm(bias[c0:c1].unsqueeze(0), q, x[c0:c1].T, alpha=alpha, beta=beta,
                        out=out[:, c0:c1])  # fmt: skip
    return out


def _to_distance(scores: Tensor, q_sq: Tensor | None) -> Tensor:
    """Distances from _scores, in place: max(1 - s, 0) (cos), max(|q_i|^2 - s, 0) (l2). (b, m).

    Monotone (non-increasing) in the score, so the score order is the distance order, up to
    scores that round to one distance: those become ties, resolved by index like any other.
    The clamp turns near-duplicates that rounding pushes below 0 into exact ties at 0.
    """
    if q_sq is None:
        return scores.neg_().add_(1.0).clamp_(min=0.0)
    return scores.neg_().add_(q_sq.unsqueeze(1)).clamp_(min=0.0)


def _apply_duplicates(
    scores: Tensor, dups: _Duplicates | None, s: int, q_sq: Tensor | None
) -> Tensor:
    """Make a (b, N) score block of rows s:s+b respect exact duplicates (module docstring).

    Copies' columns take their representative's scores; each row's own copies get the score
    whose distance is exactly 0 (1 for cos, |q|^2 for l2). Call before excluding self.
    """
    if dups is None:
        return scores
    dups.fix_columns(scores)
    r, j = dups.rows_in(s, s + scores.shape[0])
    scores[r, j] = 1.0 if q_sq is None else q_sq[r]
    return scores


_MERGE_ROWS = 4096  # earlier rows per candidate merge of a symmetric slab
SLAB_ELEMENTS = 2**25  # the default block: block x N distances within 128 MB of float32


def default_block_size(n: int) -> int:
    """Rows per block when none is given: 1024, fewer above N = 32k so that one (block, N)
    block stays within SLAB_ELEMENTS (at least 64 rows)."""
    return min(1024, max(64, SLAB_ELEMENTS // max(n, 1)))


def _symmetric_scores(
    q: Tensor, x: Tensor, q_sq: Tensor | None, x_sq: Tensor | None, out: Tensor
) -> Tensor:
    """Nearness scores by a formula symmetric in (i, j), for the symmetric search; larger = nearer.

    <q_i, x_j> (cos, rows unit) or 2 <q_i, x_j> - |q_i|^2 - |x_j|^2 = -|q_i - x_j|^2 (l2).
    (b, m) into out. _symmetric_to_distance turns them into distances.
    """
    if x_sq is None:
        return _gemm_nt(q, x, out)
    return _gemm_nt(q, x, out, x_sq, 2.0, -1.0).sub_(q_sq.unsqueeze(1))


def _symmetric_to_distance(scores: Tensor, l2: bool) -> Tensor:
    """Scores of _symmetric_scores -> distances, in place: max(1 - s, 0) (cos), max(-s, 0) (l2)."""
    if l2:
        return scores.neg_().clamp_(min=0.0)
    return scores.neg_().add_(1.0).clamp_(min=0.0)


def _row_distances(
    xp: Tensor,
    x_sq: Tensor | None,
    neg_x_sq: Tensor | None,
    dups: _Duplicates | None,
    s: int,
    e: int,
    out: Tensor,
) -> Tensor:
    """Distances from rows s:e of xp to all rows, self at +inf (the row-block search's values).

    -> (e - s, N) view of out; the same numbers knn's row-block search ranks.
    """
    q_sq = None if x_sq is None else x_sq[s:e]
    d = _apply_duplicates(_scores(xp[s:e], xp, neg_x_sq, out), dups, s, q_sq)
    d.diagonal(offset=s).fill_(-torch.inf)
    return _to_distance(d, q_sq)


def pairwise_distances(a: Tensor, b: Tensor, metric: Metric = "cos") -> Tensor:
    """Dense distances between the rows of a and b, with the conventions of this module.

    a: (n, D), b: (m, D) -> (n, m). For small inputs and tests: this one does build n x m.
    The duplicate rule is not applied here (it concerns one point set, not two).
    """
    ap, a_sq, _ = _prepare(a, metric, "a")
    bp, b_sq, _ = _prepare(b.to(ap.dtype), metric, "b")
    if ap.shape[1] != bp.shape[1]:
        raise ValueError(f"dimension mismatch: a has D={ap.shape[1]}, b has D={bp.shape[1]}")
    out = torch.empty(ap.shape[0], bp.shape[0], dtype=ap.dtype, device=ap.device)
    return _to_distance(_scores(ap, bp, None if b_sq is None else -b_sq, out), a_sq)


# --------------------------------------------------------------------------------------------
# exact kNN
# --------------------------------------------------------------------------------------------


def _sort_by_dist_then_index(vals: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row lexicographically by (value, index). vals, idx: (n, m) -> (n, m), (n, m)."""
    idx, order = idx.sort(dim=1)
    vals = vals.gather(1, order)
    vals, order = vals.sort(dim=1, stable=True)  # stable: equal values keep index order
    return vals, idx.gather(1, order)


def _finish(
    vals: Tensor,
    idx: Tensor,
    k: int,
    exact_rows: Callable[[Tensor], tuple[Tensor, Tensor]],
    presorted: bool = False,
) -> tuple[Tensor, Tensor]:
    """Turn per-row candidate sets of size k+1 into the exact k-NN in (distance, index) order.

    Each row of (vals, idx) (n, k+1) holds k+1 candidates (sorted by value if presorted) such
    that every point left out is at distance >= the largest candidate. If the k-th and (k+1)-th
    smallest differ, the k smallest are the unique answer (whatever topk chose among equal
    values); if they are equal the tie may extend past the candidates, so that row is redone over
    its whole distance row by exact_rows(rows (r,)) -> (r, k), (r, k). Rows with a tie inside the
    k are re-sorted by (distance, index). Ties are rare, so only those rows pay for it.
    """
    if not presorted:
        vals, order = vals.sort(dim=1)
        idx = idx.gather(1, order)
    equal_next = vals[:, 1:] == vals[:, :-1]  # (n, k): entry m equals entry m + 1
    boundary = equal_next[:, k - 1]
    inner = equal_next[:, : k - 1].any(dim=1) & ~boundary
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    if bool(inner.any()):
        rows = inner.nonzero().flatten()
        vals[rows], idx[rows] = _sort_by_dist_then_index(vals[rows], idx[rows])
    if bool(boundary.any()):
        rows = boundary.nonzero().flatten()
        vals[rows], idx[rows] = exact_rows(rows)
    return vals, idx


def _knn_rowblock(
    xp: Tensor, x_sq: Tensor | None, dups: _Duplicates | None, k: int, block_size: int
) -> tuple[Tensor, Tensor]:
    """One (block, N) score block per row range; top-(k+1) scores per row become distances."""
    n = xp.shape[0]
    neg_sq = None if x_sq is None else -x_sq
    buf = torch.empty(min(block_size, n) * n, dtype=xp.dtype, device=xp.device)
    out_v = torch.empty(n, k, dtype=xp.dtype, device=xp.device)
    out_i = torch.empty(n, k, dtype=torch.long, device=xp.device)
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        q_sq = None if x_sq is None else x_sq[s:e]
        scores = _scores(xp[s:e], xp, neg_sq, buf[: (e - s) * n].view(e - s, n))
        _apply_duplicates(scores, dups, s, q_sq)
        scores.diagonal(offset=s).fill_(-torch.inf)  # exclude self
        # k + 1 <= n candidates: one more than needed, to see whether the k-th is tied.
        v, i = scores.topk(k + 1, dim=1)  # largest scores first = smallest distances first
        dist = _to_distance(v, q_sq)

        def exact_rows(
            rows: Tensor, scores: Tensor = scores, q_sq: Tensor | None = q_sq
        ) -> tuple[Tensor, Tensor]:
            # Redo tied rows from the very same scores; column indices ascend, so a stable sort
            # by distance is the (distance, index) order.
            full = _to_distance(scores[rows], None if q_sq is None else q_sq[rows])
            vals, idx = full.sort(dim=1, stable=True)
            return vals[:, :k], idx[:, :k]

        out_v[s:e], out_i[s:e] = _finish(dist, i, k, exact_rows, presorted=True)
    return out_v, out_i


def sparse_nonzero(mask: Tensor) -> tuple[Tensor, Tensor]:
    """mask.nonzero(as_tuple=True) for a contiguous 2-D bool mask with few True entries.

    Scans the mask as int64 words (8 entries each) first and expands only the words that are
    not zero: one pass over N / 8 words instead of N bytes. Same indices, same order.
    """
    if mask.numel() % 8 or not mask.is_contiguous():
        rows, cols = mask.nonzero(as_tuple=True)
        return rows, cols
    flat = mask.view(-1)
    words = flat.view(torch.int64).nonzero().flatten()  # words holding a True entry, ascending
    inner = flat.view(-1, 8)[words].nonzero(as_tuple=True)  # (word slot, byte) in order
    pos = words[inner[0]] * 8 + inner[1]
    return pos // mask.shape[1], pos % mask.shape[1]


_TOPK_GROUPS = 8  # column groups per row of row_topk's pre-selection


def row_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row, unsorted: scores (b, e) -> values, columns (b, k).

    The same sets (up to which of equal values are taken) as scores.topk(k, sorted=False), for
    about 2/3 of its time on CPU at e = 20k, k = 101. The first g m columns (g = _TOPK_GROUPS,
    m = e // g) form m groups {j, j + m, ..., j + (g-1) m}, whose maxima are one elementwise max
    of g contiguous slices. Only the k groups with the largest maxima can hold the answer: a
    group left out has a maximum <= each of k chosen maxima, so every entry it holds is <= k
    candidates. Those k g entries and the last e - g m columns are ranked exactly.
    """
    b, e = scores.shape
    g = _TOPK_GROUPS
    m = e // g
    if m < 4 * k:  # few columns: the plain selection is as cheap
        v, i = scores.topk(k, dim=1, sorted=False)
        return v, i
    group_max = scores[:, : g * m].view(b, g, m).amax(dim=1)  # (b, m)
    groups = group_max.topk(k, dim=1, sorted=False).indices
    offsets = torch.arange(0, g * m, m, device=scores.device)
    cols = (groups.unsqueeze(2) + offsets).view(b, k * g)
    if g * m < e:
        rest = torch.arange(g * m, e, device=scores.device)
        cols = torch.cat([cols, rest.expand(b, -1)], dim=1)
    v, j = scores.gather(1, cols).topk(k, dim=1, sorted=False)
    return v, cols.gather(1, j)


def _merge_column_candidates(
    d: Tensor, vals: Tensor, idx: Tensor, c0: int, c1: int, s: int
) -> None:
    """Merge into the running top-(k+1) of rows c0:c1 their entries in d's columns c0:c1.

    d: (b, e) scores of rows s:s+b against rows 0:e (symmetric, so column c holds row c's
    scores for rows s:s+b); vals, idx: (N, k+1) running candidate scores and indices, updated in
    place for rows c0:c1.
    """
    thr = vals[c0:c1].amin(dim=1)
    rows, cols = sparse_nonzero(d[:, c0:c1] > thr)
    if cols.numel() == 0:
        return
    # Group the entries by row c: a sort of the few entries, not a transpose of the (b, c) mask.
    cols, order = cols.sort(stable=True)
    rows = rows[order]
    cand_v = d[rows, cols + c0]
    counts = torch.bincount(cols, minlength=c1 - c0)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = cols * width + (torch.arange(cols.numel(), device=d.device) - starts[cols])
    pad_v = torch.full(((c1 - c0) * width,), -torch.inf, dtype=d.dtype, device=d.device)
    pad_i = torch.full(((c1 - c0) * width,), -1, dtype=torch.long, device=d.device)
    pad_v[slot] = cand_v
    pad_i[slot] = rows + s
    all_v = torch.cat([vals[c0:c1], pad_v.view(c1 - c0, width)], dim=1)
    all_i = torch.cat([idx[c0:c1], pad_i.view(c1 - c0, width)], dim=1)
    v2, j2 = all_v.topk(vals.shape[1], dim=1, sorted=False)
    vals[c0:c1], idx[c0:c1] = v2, all_i.gather(1, j2)


def _symmetric_candidates(
    xp: Tensor, x_sq: Tensor | None, k1: int, block_size: int
) -> tuple[Tensor, Tensor]:
    """Each row's top-k1 scores and their columns, (N, k1) each, from lower-triangle blocks only:
    block J computes its rows against columns [0, end of J).

    The score matrix is symmetric, so the same (b, e) slab also holds, transposed, the scores
    of every earlier row c < s against the b rows of J. Rows of J take their top-(k+1) over the
    slab. For earlier rows only entries above their current (k+1)-th best can enter, which after
    the first blocks is a few per row: those are gathered (mask + nonzero) and merged. Half the
    GEMM work, for a mask pass and the merges. Ranking runs on scores (larger = nearer, so topk
    takes the largest in place). The slab buffer dies on return, before the caller's sorts.
    """
    n = xp.shape[0]
    dev = xp.device
    inf = torch.inf
    # Running candidate scores; placeholders (-inf, -1) lose to any real candidate.
    vals = torch.full((n, k1), -inf, dtype=xp.dtype, device=dev)
    idx = torch.full((n, k1), -1, dtype=torch.long, device=dev)
    buf = torch.empty(min(block_size, n) * n, dtype=xp.dtype, device=dev)
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        b = e - s
        q_sq = None if x_sq is None else x_sq[s:e]
        c_sq = None if x_sq is None else x_sq[:e]
        d = _symmetric_scores(xp[s:e], xp[:e], q_sq, c_sq, buf[: b * e].view(b, e))
        d.diagonal(offset=s).fill_(-inf)
        kk = min(k1, e)
        v, i = row_topk(d, kk)
        vals[s:e, :kk], idx[s:e, :kk] = v, i
        if s == 0:
            continue
        # Column direction: d[r, c] (c < s) is also the score of row s + r for row c. Only
        # entries above row c's current (k+1)-th best can enter (after the first blocks a few
        # per row); they are gathered chunk by chunk of earlier rows, so every temporary is
        # O(block x block). Strict ">": a point equal to the (k+1)-th best may be left out,
        # which keeps the invariant _finish relies on (everything left out is >= the largest
        # candidate distance).
        for c0 in range(0, s, _MERGE_ROWS):
            c1 = min(c0 + _MERGE_ROWS, s)
            _merge_column_candidates(d, vals, idx, c0, c1, s)
    return vals, idx


def _knn_symmetric(
    xp: Tensor, x_sq: Tensor | None, k: int, block_size: int
) -> tuple[Tensor, Tensor]:
    """The symmetric search (_symmetric_candidates); the k + 1 survivors become distances."""
    n, dev, inf = xp.shape[0], xp.device, torch.inf
    vals, idx = _symmetric_candidates(xp, x_sq, k + 1, block_size)
    l2 = x_sq is not None

    def exact_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
        d = torch.empty(rows.numel(), n, dtype=xp.dtype, device=dev)
        _symmetric_scores(xp[rows], xp, None if x_sq is None else x_sq[rows], x_sq, d)
        d[torch.arange(rows.numel(), device=dev), rows] = -inf
        vals, idx = _symmetric_to_distance(d, l2).sort(dim=1, stable=True)
        return vals[:, :k], idx[:, :k]

    return _finish(_symmetric_to_distance(vals, l2), idx, k, exact_rows)


def knn(
    x: Tensor,
    k: int,
    *,
    metric: Metric = "cos",
    block_size: int | None = None,
    symmetric: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact k nearest neighbours of every row of x among the other rows.

    x: (N, D), N > k, finite -> (dist (N, k), idx (N, k) int64) on x's device, each row sorted by
    (distance, index) (see the module docstring for metrics and ties). dist is float32 (float64
    for float64 input). Memory O(block_size x N); block_size=None: default_block_size(N).

    symmetric=True: only the lower triangle of the distance matrix, (block_size, rows so far)
    slabs (half the GEMM work; the default on CPU, where the GEMM is the cost). A pair's
    distance is then computed once and used for both rows, from GEMMs of different shapes, so
    the duplicate rule (module docstring) cannot be applied by column: input with exact
    duplicates runs the row-block search instead (same results). symmetric=False: full
    (block_size, N) row blocks, one GEMM each (the default on other devices, where the GEMM is
    cheap and each merge of the symmetric search would wait for the device). Both follow the
    module's conventions; near-ties can round differently between the two.
    """
    xp, x_sq, dups = _prepare(x, metric)
    _check_k(k, xp.shape[0])
    if block_size is None:
        block_size = default_block_size(xp.shape[0])
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if symmetric is None:
        symmetric = xp.device.type == "cpu"
    if symmetric and dups is None:
        return _knn_symmetric(xp, x_sq, k, block_size)
    return _knn_rowblock(xp, x_sq, dups, k, block_size)


# --------------------------------------------------------------------------------------------
# agreement between two spaces
# --------------------------------------------------------------------------------------------


def _check_neighbors(nbrs: Tensor, name: str) -> None:
    if not isinstance(nbrs, Tensor) or nbrs.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, k) index tensor")
    if nbrs.shape[0] == 0 or nbrs.shape[1] == 0:
        raise ValueError(f"{name}: empty neighbour lists, shape {tuple(nbrs.shape)}")
    if nbrs.is_floating_point():
        raise ValueError(f"{name}: neighbour indices must be integers, got {nbrs.dtype}")


def knn_overlap(nbrs_a: Tensor, nbrs_b: Tensor) -> Tensor:
    """Per-image kNN overlap (the seed's KNOR): |N_k^A(i) ∩ N_k^B(i)| / k.

    nbrs_a, nbrs_b: (N, k) neighbour indices of the same N images in two spaces (no repeats
    within a row, e.g. from knn) -> (N,) float64 in [0, 1]. Chance level: knn_overlap_chance.
    Vectorised with sort + searchsorted: O(N k log k) time, O(N k) memory.
    """
    _check_neighbors(nbrs_a, "nbrs_a")
    _check_neighbors(nbrs_b, "nbrs_b")
    check_same_n(nbrs_a.shape[0], nbrs_b.shape[0], "rows of neighbour lists")
    if nbrs_a.shape[1] != nbrs_b.shape[1]:
        raise ValueError(
            f"different k: nbrs_a has {nbrs_a.shape[1]} neighbours per row, nbrs_b "
            f"{nbrs_b.shape[1]}; slice both to the same k"
        )
    k = nbrs_a.shape[1]
    a = nbrs_a.long().contiguous()  # slices like idx[:, :k] are not
    b_sorted = nbrs_b.to(a.device).long().sort(dim=1).values.contiguous()
    pos = torch.searchsorted(b_sorted, a).clamp_(max=k - 1)
    hits = (b_sorted.gather(1, pos) == a).sum(dim=1)
    return hits.double() / k


def knn_overlap_chance(n: int, k: int) -> float:
    """Expected knn_overlap of two independent random k-neighbourhoods: k / (n - 1)."""
    _check_k(k, n)
    return k / (n - 1)


def neighborhood_mean_ci(
    values: Tensor, nbrs_a: Tensor, nbrs_b: Tensor, level: float = 0.95
) -> tuple[float, float]:
    """Normal CI of the mean of a per-image kNN statistic, with a variance that sees the kNN graph.

    values: (N,) per-image statistic (e.g. knn_overlap(nbrs_a, nbrs_b)); nbrs_a, nbrs_b: (N, k)
    the neighbour lists it was computed from -> (low, high) for the mean, clipped to [0, 1] if
    values lie there.

    Why not a bootstrap over images: image i's value depends on its neighbourhoods, and images
    near each other (in either space) share neighbours, so values are positively correlated and
    an i.i.d. resample of the values gives too narrow an interval (two independent Gaussian
    spaces, N = 300, k = 10: 85-87% coverage of chance for a nominal 95%). Resampling images
    and recomputing neighbourhoods in the resample (copies of an image kept out of each other's
    neighbourhoods) and the delete-one jackknife with recomputed neighbourhoods both overshoot
    (standard error 1.5-1.9x the true one, coverage ~100%): the statistic is discrete in each
    neighbourhood, multiplicities act as hubs, and the jackknife's Efron-Stein bias is large.
    What is used instead is a network HAC estimator (dependency-graph variance, as in
    Kojevnikov, Marmer and Song 2021): with r = values - mean and E the symmetrised union of
    the two kNN graphs,
        var(mean) = (sum_i r_i^2 + 2 sum_{{i,j} in E} r_i r_j) / N^2 / (1 - (N + 2|E|) / N^2),
    the covariance of every pair of images that are neighbours in either space (the pairs whose
    neighbourhoods overlap most), and the last factor undoes the downward bias of centring on
    the sample mean. Measured (tests/test_metrics_neighbors.py and the simulation that chose it):
    coverage of chance 95% at N = 300, k = 10 and 94-96% at N = 500, k = 25; with planted
    structure (y = x + noise) 91-94%. It degrades when k/N is large (k/N = 1/8: 84%), where
    dependence reaches beyond direct neighbours. O(N k log(N k)), deterministic (no seed).
    """
    v = _check_values(values, nbrs_a, nbrs_b)
    n, k = nbrs_a.shape
    mean = float(v.mean())
    r = v - mean
    src = torch.arange(n, device=nbrs_a.device).repeat_interleave(k)
    dst = torch.cat([nbrs_a.reshape(-1), nbrs_b.to(nbrs_a.device).reshape(-1)]).long()
    src = torch.cat([src, src])
    lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
    key = torch.unique(lo * n + hi)  # each unordered pair {i, j}, i != j, once
    i, j = (key // n).cpu(), (key % n).cpu()
    var = (float(r.square().sum()) + 2.0 * float((r[i] * r[j]).sum())) / n**2
    frac = (n + 2 * key.numel()) / n**2
    if frac >= 1.0:  # the graph is (nearly) complete: no independent information left
        return float("nan"), float("nan")
    se = max(var / (1.0 - frac), 0.0) ** 0.5
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)))
    low, high = mean - z * se, mean + z * se
    if bool((v >= 0).all() and (v <= 1).all()):
        low, high = max(low, 0.0), min(high, 1.0)
    return low, high


def knn_overlap_ci(nbrs_a: Tensor, nbrs_b: Tensor, level: float = 0.95) -> tuple[float, float]:
    """CI of the mean kNN overlap of (N, k) neighbour lists: neighborhood_mean_ci's scheme."""
    return neighborhood_mean_ci(knn_overlap(nbrs_a, nbrs_b), nbrs_a, nbrs_b, level)


def _check_values(values: Tensor, nbrs_a: Tensor, nbrs_b: Tensor) -> Tensor:
    _check_neighbors(nbrs_a, "nbrs_a")
    _check_neighbors(nbrs_b, "nbrs_b")
    check_same_n(nbrs_a.shape[0], nbrs_b.shape[0], "rows of neighbour lists")
    v = torch.as_tensor(values).double().cpu()
    if v.ndim != 1 or v.numel() != nbrs_a.shape[0]:
        raise ValueError(f"values: expected ({nbrs_a.shape[0]},), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("values contain NaN or Inf")
    if v.numel() < 3:
        raise ValueError(f"need at least 3 images for a CI, got {v.numel()}")
    return v


def mutual_knn(x_a: Tensor, x_b: Tensor, k: int, *, block_size: int | None = None) -> Tensor:
    """platonic-rep's "mutual_knn", under its own name: the cosine kNN overlap, per image.

    x_a: (N, Da), x_b: (N, Db) -> (N,) float64; .mean() is platonic-rep's score (they L2-normalise
    and take the top-k inner products: knn(metric="cos") here, with our exact tie rule).
    """
    check_features(x_a, "x_a")
    check_features(x_b, "x_b")
    check_same_n(x_a.shape[0], x_b.shape[0])
    _, nbrs_a = knn(x_a, k, metric="cos", block_size=block_size)
    _, nbrs_b = knn(x_b, k, metric="cos", block_size=block_size)
    return knn_overlap(nbrs_a, nbrs_b)


def neighbor_ranks(
    x: Tensor, nbrs: Tensor, *, metric: Metric = "cos", block_size: int = 1024
) -> Tensor:
    """Rank, in x's own neighbour order of image i, of each listed neighbour j = nbrs[i, m].

    x: (N, D); nbrs: (N, k) indices (typically another space's knn, never i itself) -> (N, k)
    int64 ranks in 1..N-1, where rank_x(i, j) = 1 + #{l != i : (d_x(i, l), l) < (d_x(i, j), j)},
    the (distance, index) order of knn: the neighbours knn(x) returns have ranks 1..k.

    Blockwise, O(block_size x N) memory: per row block, the k thresholds d_x(i, j) and the next
    float above each are sorted, every distance of the row is located among them by one
    searchsorted, and a histogram gives #{l : d < t} and #{l : d <= t}. Only an entry whose
    distance another point shares exactly (a tie) has its row scanned for the index rule.
    Time O(N^2 (D + log k)).
    """
    xp, x_sq, dups = _prepare(x, metric)
    _check_neighbors(nbrs, "nbrs")
    n, k = xp.shape[0], nbrs.shape[1]
    check_same_n(n, nbrs.shape[0], "(rows of x vs rows of nbrs)")
    _check_k(k, n)
    nb = nbrs.to(xp.device).long()
    if bool(((nb < 0) | (nb >= n)).any()):
        raise ValueError(f"nbrs: indices must lie in [0, {n})")
    if bool((nb == torch.arange(n, device=xp.device).unsqueeze(1)).any()):
        raise ValueError("nbrs: a row lists the image itself; self must be excluded")
    ranks = torch.empty(n, k, dtype=torch.long, device=xp.device)
    buf = torch.empty(min(block_size, n) * n, dtype=xp.dtype, device=xp.device)
    neg_sq = None if x_sq is None else -x_sq
    nbins = 2 * k + 1
    for s in range(0, n, block_size):
        e = min(s + block_size, n)
        b = e - s
        # the row-block search's distances; self at +inf, never below a finite threshold
        d = _row_distances(xp, x_sq, neg_sq, dups, s, e, buf[: b * n].view(b, n))
        t = d.gather(1, nb[s:e])  # (b, k)
        up = torch.nextafter(t, torch.full_like(t, torch.inf))  # "< up" is "<= t"
        edges = torch.cat([t, up], dim=1).sort(dim=1).values  # (b, 2k)
        # int32 bins: half the memory traffic of int64 in the two passes over the (b, n) block.
        q = torch.searchsorted(edges, d, right=True, out_int32=True)  # (b, n): #{edges <= d_l}
        offs = torch.arange(b, device=xp.device, dtype=torch.int32).unsqueeze(1) * nbins
        hist = torch.bincount((q + offs).flatten(), minlength=b * nbins).view(b, nbins)
        cum = hist.cumsum(dim=1)  # cum[r, p] = #{l : q_l <= p}
        # With P the first position of u in edges: d_l < u <=> edges[P] > d_l <=> q_l <= P.
        below = cum.gather(1, torch.searchsorted(edges, t))  # #{l : d_l < t}
        below_eq = cum.gather(1, torch.searchsorted(edges, up))  # #{l : d_l <= t}
        r = below + 1
        for row, col in (below_eq - below > 1).nonzero().tolist():  # j shares its distance
            j = int(nb[s + row, col])
            r[row, col] += int((d[row, :j] == t[row, col]).sum())
        ranks[s:e] = r
    return ranks


def rank_displacement(ranks: Tensor) -> Tensor:
    """Mean rank displacement of A's neighbours in space B, per image.

    ranks: (N, k) = neighbor_ranks(x_b, nbrs_a) with nbrs_a in knn order -> (N,) float64:
    (1/k) sum_{m=1..k} |rank_B(i, nbrs_a[i, m]) - m|, m being the neighbour's rank in A. 0 when B
    puts A's k nearest at the same ranks; chance level rank_displacement_chance(N, k).
    ranks[:, :k'] gives the value at a smaller k' (ranks do not depend on k).
    """
    if ranks.ndim != 2 or ranks.shape[0] == 0 or ranks.shape[1] == 0:
        raise ValueError(f"ranks: expected a non-empty (N, k) tensor, got {tuple(ranks.shape)}")
    pos = torch.arange(1, ranks.shape[1] + 1, device=ranks.device)
    return (ranks - pos).abs().double().mean(dim=1)


def rank_displacement_chance(n: int, k: int) -> float:
    """Expected rank_displacement when B's ranks are independent of A (uniform on 1..n-1).

    Mean over r = 1..k of E|U - r|, U uniform on {1..M}, M = n - 1, using
    sum_u |u - r| = r(r-1)/2 + (M-r)(M-r+1)/2.
    """
    _check_k(k, n)
    m = n - 1
    r = np.arange(1, k + 1, dtype=np.float64)
    return float(np.mean((r * (r - 1) / 2 + (m - r) * (m - r + 1) / 2) / m))


# --------------------------------------------------------------------------------------------
# correlation of pairwise distances
# --------------------------------------------------------------------------------------------


def sample_pairs(n: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform sample of distinct pairs i < j of n points, without replacement, seeded.

    -> (i, j), each (min(n_pairs, n(n-1)/2),) int64, sorted by (i, j); all pairs when
    n_pairs >= n(n-1)/2. Draws linear pair indices (numpy Generator.choice without replacement,
    never an N x N array) and maps them to (i, j) in row-major upper-triangle order.
    """
    if n < 2:
        raise ValueError(f"need at least 2 points for pairs, got n={n}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    total = n * (n - 1) // 2
    if n_pairs >= total:
        lin = np.arange(total, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        lin = np.sort(rng.choice(total, size=n_pairs, replace=False).astype(np.int64))

    def offset(i: np.ndarray) -> np.ndarray:  # linear index of pair (i, i + 1)
        return i * (2 * n - i - 1) // 2

    # Invert offset with a float estimate, then one integer correction step either way so that
    # rounding in sqrt cannot misplace a pair.
    i = np.floor(((2 * n - 1) - np.sqrt((2.0 * n - 1) ** 2 - 8.0 * lin)) / 2).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    i -= offset(i) > lin
    i += offset(i + 1) <= lin
    return i, lin - offset(i) + i + 1


def _pair_distances(
    xp: Tensor, i: np.ndarray, j: np.ndarray, metric: str, chunk: int = 8192
) -> np.ndarray:
    """Distances of the listed pairs, chunked. xp from _prepare (unit rows for cos).

    -> (len(i),) float64: cos distance, or Euclidean (not squared) distance for l2.
    """
    ii = torch.from_numpy(i).to(xp.device)
    jj = torch.from_numpy(j).to(xp.device)
    out = []
    for s in range(0, ii.numel(), chunk):
        a, b = xp[ii[s : s + chunk]], xp[jj[s : s + chunk]]
        out.append(1.0 - (a * b).sum(dim=1) if metric == "cos" else (a - b).norm(dim=1))
    return torch.cat(out).double().cpu().numpy()


def distance_correlation(
    x_a: Tensor,
    x_b: Tensor,
    *,
    metric: Metric = "cos",
    n_pairs: int = 100_000,
    seed: int = 0,
) -> dict[str, float]:
    """Pearson and Spearman correlation of pairwise distances in two spaces, on sampled pairs.

    x_a: (N, Da), x_b: (N, Db) -> {"pearson", "spearman", "n_pairs"}. The same pairs i < j
    (sample_pairs(N, n_pairs, seed)) are measured in both spaces: cos distance, or for l2 the
    Euclidean (not squared) distance. Spearman gives tied distances their average rank (scipy).
    """
    from scipy import stats  # only this function needs scipy

    xa, _, _ = _prepare(x_a, metric, "x_a")
    xb, _, _ = _prepare(x_b, metric, "x_b")
    check_same_n(xa.shape[0], xb.shape[0])
    i, j = sample_pairs(xa.shape[0], n_pairs, seed)
    if i.size < 3:
        raise ValueError(f"need at least 3 pairs for a correlation, got {i.size} (N={xa.shape[0]})")
    da = _pair_distances(xa, i, j, metric)
    db = _pair_distances(xb, i, j, metric)
    return {
        "pearson": float(stats.pearsonr(da, db).statistic),
        "spearman": float(stats.spearmanr(da, db).statistic),
        "n_pairs": int(i.size),
    }
