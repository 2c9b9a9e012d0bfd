"""Similarity of two representations of the same images: linear and RBF CKA, permutation nulls.

x (N, Dx) and y (N, Dy) hold the same N images row by row. CKA = HSIC(x, y) / sqrt(HSIC(x, x)
HSIC(y, y)) with either HSIC estimator (name the one you report):

- biased (Gretton et al. 2005): tr(K H L H) / (n-1)^2, H = I - 11^T/n. For linear kernels
  K = X X^T this is ||Y_c^T X_c||_F^2 / (n-1)^2 with X_c, Y_c column-centred, computed in
  feature space: O(N (Dx + Dy)^2) time (the upper triangle of one symmetric product, half the
  flops), O((Dx + Dy)^2) extra memory; when N < Dx + Dy from the two N x N Gram matrices
  instead, the smaller product (_joint_frobenius). Biased CKA of independent data sits far
  above 0 when N is small relative to D.
- unbiased (Song et al. 2012), with K~, L~ = K, L with the diagonal set to 0:
  [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).
  It is invariant to translating x or y, so centre first; then for linear kernels, with
  a_i = |x_c,i|^2 and b_i = |y_c,i|^2 (K_c 1 = 0 makes K~ 1 = -a):
    tr(K~ L~) = ||Y_c^T X_c||_F^2 - a.b,   1^T K~ 1 = -sum(a),   1^T K~ L~ 1 = a.b,
  so HSIC_u = [||Y_c^T X_c||_F^2 - a.b n/(n-2) + sum(a) sum(b)/((n-1)(n-2))] / (n(n-3)),
  the same cost as the biased one. Its CKA is near 0 for independent data and can be
  negative; needs N >= 4.
- RBF kernels need the N x N Gram matrix (O(N^2 D) time, O(N^2) memory): rbf_cka caps N at
  max_n and draws a seeded subsample above it.

Computation is float64 by default (dtype=...), on x's device.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from scipy.linalg.blas import get_blas_funcs
from threadpoolctl import ThreadpoolController
from torch import Tensor

from src.metrics.neighbors import check_features, check_same_n
from src.metrics.stats import permutation_pvalue


class PermutationTest(NamedTuple):
    """A similarity and its null distribution under shuffled pairing of the rows."""

    observed: float
    null: Tensor  # (n_perm,) float64
    p_value: float  # (#{null >= observed} + 1) / (n_perm + 1)


def _pair(
    x: Tensor, y: Tensor, dtype: torch.dtype, *, finite: bool = True
) -> tuple[Tensor, Tensor]:
    """Validate a pair of representations of the same images; cast to dtype on x's device.

    finite=False leaves the NaN/Inf check to _check_result (one pass less over the data).
    """
    check_features(x, "x", finite=finite)
    check_features(y, "y", finite=finite)
    check_same_n(x.shape[0], y.shape[0])
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a similarity, got N={x.shape[0]}")
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def _check_not_constant(x: Tensor, name: str) -> None:
    # Exact test for "all rows identical" (centring would leave rounding residue, not zeros).
    # Two rows that differ settle it in O(D); only then is the whole matrix read.
    if x.shape[0] > 1 and bool((x[0] != x[-1]).any()):
        return
    if bool((x.amax(dim=0) == x.amin(dim=0)).all()):
        raise ValueError(f"{name}: every row is identical (zero variance): CKA is undefined")


def _centre(x: Tensor, name: str) -> Tensor:
    _check_not_constant(x, name)
    return x - x.mean(dim=0, keepdim=True)


def _permutations(n: int, n_perm: int, seed: int) -> Iterator[Tensor]:
    """n_perm seeded random permutations of range(n) (CPU generator, so same on every device)."""
    if n_perm < 1:
        raise ValueError(f"n_perm must be positive, got {n_perm}")
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_perm):
        yield torch.randperm(n, generator=g)


# --------------------------------------------------------------------------------------------
# linear CKA in feature space
# --------------------------------------------------------------------------------------------


# Columns per GEMM of _upper_gram off CPU: larger blocks make fewer, larger GEMMs but compute
# more of the lower triangle ((1 + block/D)/2 of the full product). At N = 10k, D = 1024 (float64,
# 2 CPU threads, before the CPU path became one syrk) 256 was the fastest of 128/256/512.
JOINT_BLOCK = 256


@functools.cache
def _blas() -> ThreadpoolController:
    """The BLAS libraries loaded in this process (scipy's among them), to limit their threads."""
    return ThreadpoolController()


def _upper_gram(z: Tensor, block: int = JOINT_BLOCK) -> Tensor:
    """z^T z's upper triangle, zeros below: z (N, D) -> (D, D), half the flops of z.T @ z.

    On CPU one BLAS syrk (_upper_gram_syrk), elsewhere (and for dtypes BLAS lacks) GEMMs over
    column blocks (_upper_gram_blocked).
    """
    if z.device.type == "cpu" and z.dtype in (torch.float32, torch.float64):
        return _upper_gram_syrk(z)
    return _upper_gram_blocked(z, block)


def _upper_gram_syrk(z: Tensor) -> Tensor:
    """_upper_gram by scipy's BLAS syrk on torch's thread count: at N = 10k, D = 2048 (float64,
    2 CPU threads) 0.49-0.63 s against 0.60-0.71 s for _upper_gram_blocked, 1.5x faster at
    N = 2011 and 4x at N = 500."""
    zn = z.detach().numpy()
    d = zn.shape[1]
    syrk = get_blas_funcs("syrk", (zn,))
    # syrk(A) = A A^T (trans=0) or A^T A (trans=1): pass the Fortran-ordered view, no copy
    a, trans = (zn.T, 0) if zn.flags.c_contiguous else (zn, 1)
    with _blas().limit(limits=torch.get_num_threads(), user_api="blas"):
        # into zeros (nothing below the diagonal), which f2py would copy without overwrite_c
        c = np.zeros((d, d), dtype=zn.dtype, order="F")
        g = syrk(1.0, a, trans=trans, c=c, overwrite_c=1)
    return torch.from_numpy(g)


def _upper_gram_blocked(z: Tensor, block: int) -> Tensor:
    """_upper_gram by GEMMs z[:, i:e]^T z[:, i:] over column blocks, which also compute the
    lower half of each diagonal block (then zeroed): (1 + block/D)/2 of the full product."""
    d = z.shape[1]
    g = z.new_zeros(d, d)
    for i in range(0, d, block):
        e = min(i + block, d)
        g[i:e, i:] = z[:, i:e].T @ z[:, i:]
    return g.triu_()


def _symmetric_sq(upper: Tensor) -> Tensor:
    """||S||_F^2 of the symmetric S whose upper triangle (zeros below) is given: (D, D) -> ()."""
    return 2.0 * upper.square().sum() - upper.diagonal().square().sum()


def _symmetric_dot(upper_a: Tensor, upper_b: Tensor) -> Tensor:
    """<A, B>_F of two symmetric matrices given by their upper triangles: (n, n) x 2 -> ()."""
    return 2.0 * (upper_a * upper_b).sum() - upper_a.diagonal() @ upper_b.diagonal()


def _centred_joint(x: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    """Z = [X_c  Y_c] (N, Dx + Dy) in dtype: each input centred while it is copied in, one pass.

    The means accumulate in dtype (float64 by default) whatever x's dtype.
    """
    n, dx = x.shape
    z = torch.empty(n, dx + y.shape[1], dtype=dtype, device=x.device)
    torch.sub(x, x.mean(dim=0, keepdim=True, dtype=dtype), out=z[:, :dx])
    torch.sub(y, y.mean(dim=0, keepdim=True, dtype=dtype), out=z[:, dx:])
    return z


def _joint_frobenius(z: Tensor, dx: int, block: int = JOINT_BLOCK) -> tuple[Tensor, Tensor, Tensor]:
    """(||X_c^T X_c||_F^2, ||Y_c^T X_c||_F^2, ||Y_c^T Y_c||_F^2) from Z = [X_c Y_c] (N, Dx + Dy).

    Per case, from the smaller of two symmetric products (_upper_gram, half of each):
    - N >= Dx + Dy: the upper triangle of Z^T Z, whose two diagonal blocks are the self
      products' upper triangles and whose top-right block is the cross product: N (Dx + Dy)^2 / 2
      multiply-adds, in one syrk on CPU;
    - N < Dx + Dy (few images of wide features, as in a bootstrap over a held-out split): the
      Gram matrices K_c = X_c X_c^T and L_c = Y_c Y_c^T, with ||Y_c^T X_c||_F^2 = <K_c, L_c>_F:
      N^2 (Dx + Dy) / 2 multiply-adds and N x N memory instead of D x D.
    """
    n, d = z.shape
    if n < d:
        k, l = _upper_gram(z[:, :dx].T, block), _upper_gram(z[:, dx:].T, block)  # noqa: E741
        return _symmetric_sq(k), _symmetric_dot(k, l), _symmetric_sq(l)
    g = _upper_gram(z, block)
    return _symmetric_sq(g[:dx, :dx]), g[:dx, dx:].square().sum(), _symmetric_sq(g[dx:, dx:])


def _hsic_from_sums(
    s: Tensor, n: int, ab: Tensor | None, sa: Tensor | None, sb: Tensor | None
) -> Tensor:
    """HSIC from s = ||B_c^T A_c||_F^2; biased when ab is None, else unbiased with ab = a.b,
    sa = sum(a), sb = sum(b) (a, b the squared centred row norms; module docstring)."""
    if ab is None:
        return s / (n - 1) ** 2
    assert sa is not None and sb is not None
    return (s - ab * n / (n - 2) + sa * sb / ((n - 1) * (n - 2))) / (n * (n - 3))


def _linear_hsic_centred(
    xc: Tensor,
    yc: Tensor,
    a: Tensor | None,
    b: Tensor | None,
    unbiased: bool,
) -> Tensor:
    """HSIC of centred xc (N, Dx), yc (N, Dy) -> (); a = |xc_i|^2, b = |yc_i|^2 (N,) are needed
    for the unbiased estimator only."""
    n = xc.shape[0]
    cross = (yc.T @ xc).square().sum()
    if not unbiased:
        return cross / (n - 1) ** 2
    assert a is not None and b is not None
    ab = a @ b
    return (cross - ab * n / (n - 2) + a.sum() * b.sum() / ((n - 1) * (n - 2))) / (n * (n - 3))


def _linear_parts(
    x: Tensor, y: Tensor, unbiased: bool, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Validated, centred xc, yc and (unbiased only) their squared row norms a, b."""
    x, y = _pair(x, y, dtype, finite=False)
    _check_unbiased(x.shape[0], unbiased)
    xc, yc = _centre(x, "x"), _centre(y, "y")
    if not unbiased:
        return xc, yc, None, None
    return xc, yc, xc.square().sum(dim=1), yc.square().sum(dim=1)


def _check_result(x: Tensor, y: Tensor, *values: Tensor) -> None:
    """NaN/Inf inputs make the HSIC terms non-finite: only then pay for a pass that names rows."""
    if all(bool(torch.isfinite(v)) for v in values):
        return
    check_features(x, "x")
    check_features(y, "y")
    raise ValueError("non-finite HSIC: the features overflow in float64 products")


def _check_unbiased(n: int, unbiased: bool) -> None:
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs N >= 4 images, got N={n}")


def _ratio(hxy: Tensor, hxx: Tensor, hyy: Tensor) -> float:
    # Unbiased self-HSIC can be <= 0 for tiny, degenerate samples: CKA is then undefined (NaN).
    if float(hxx) <= 0 or float(hyy) <= 0:
        return float("nan")
    return float(hxy / (hxx * hyy).sqrt())


def linear_hsic(
    x: Tensor, y: Tensor, *, unbiased: bool = False, dtype: torch.dtype = torch.float64
) -> float:
    """HSIC with linear kernels, in feature space (module docstring): x (N, Dx), y (N, Dy)."""
    xc, yc, a, b = _linear_parts(x, y, unbiased, dtype)
    h = _linear_hsic_centred(xc, yc, a, b, unbiased)
    _check_result(x, y, h)
    return float(h)


class _LinearTerms(NamedTuple):
    """What every linear CKA needs: Z = [X_c Y_c], Dx, the three squared Frobenius norms and
    the squared centred row norms a, b (N,)."""

    z: Tensor
    dx: int
    sxx: Tensor
    sxy: Tensor
    syy: Tensor
    a: Tensor
    b: Tensor

    def hsic(self, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(HSIC(x, y), HSIC(x, x), HSIC(y, y)) with the chosen estimator."""
        n = self.z.shape[0]
        if not unbiased:
            return tuple(_hsic_from_sums(s, n, None, None, None) for s in self._sums())
        a, b = self.a, self.b
        sa, sb = a.sum(), b.sum()
        return (
            _hsic_from_sums(self.sxy, n, a @ b, sa, sb),
            _hsic_from_sums(self.sxx, n, a @ a, sa, sa),
            _hsic_from_sums(self.syy, n, b @ b, sb, sb),
        )

    def _sums(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.sxy, self.sxx, self.syy


def _linear_terms(x: Tensor, y: Tensor, unbiased: bool, dtype: torch.dtype) -> _LinearTerms:
    """Validate, centre into Z and compute the joint Frobenius sums (one pass of GEMMs)."""
    x, y = _pair_checked(x, y)
    _check_unbiased(x.shape[0], unbiased)
    z = _centred_joint(x, y, dtype)
    dx = x.shape[1]
    sxx, sxy, syy = _joint_frobenius(z, dx)
    a, b = (z[:, :dx].square().sum(dim=1), z[:, dx:].square().sum(dim=1)) if unbiased else (
        z.new_empty(0), z.new_empty(0))  # fmt: skip
    return _LinearTerms(z, dx, sxx, sxy, syy, a, b)


def _pair_checked(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """_pair's checks without its cast (the centring copy casts), plus the constant check."""
    check_features(x, "x", finite=False)
    check_features(y, "y", finite=False)
    check_same_n(x.shape[0], y.shape[0])
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a similarity, got N={x.shape[0]}")
    y = y.to(x.device)
    _check_not_constant(x, "x")
    _check_not_constant(y, "y")
    return x, y


def linear_cka(
    x: Tensor, y: Tensor, *, unbiased: bool = False, dtype: torch.dtype = torch.float64
) -> float:
    """Linear CKA: ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F).

    x: (N, Dx), y: (N, Dy) -> float in [0, 1] (biased), or the unbiased-HSIC CKA (may be < 0;
    NaN when a self-HSIC estimate is <= 0). From the upper triangle of Z^T Z with
    Z = [X_c Y_c], or of the two N x N Gram matrices when N < Dx + Dy (_joint_frobenius). At
    N = 10k, D = 1024 that is 1/9.8 of the flops of the plain Gram form, which builds both full
    N x N matrices (bench/bench_geometry.py).
    """
    t = _linear_terms(x, y, unbiased, dtype)
    hxy, hxx, hyy = t.hsic(unbiased)
    _check_result(x, y, hxy, hxx, hyy)
    return _ratio(hxy, hxx, hyy)


# Above this many bytes for the two N x N Gram matrices the null stays in feature space.
GRAM_NULL_MAX_BYTES = 2 * 2**30
# A permuted Gram inner product costs N^2 multiply-adds bound by the gathers (half of them
# gathered, _gram_null_blocked); a permuted cross product N Dx Dy multiply-adds at GEMM speed.
# One of the former costs about this many of the latter (2 CPU threads, AMD Zen 4,
# bench/bench_nulls.py and separate processes per form: 25-34 at N = 2011, Dx = 1280,
# Dy = 576, 3.0-3.6 ms against 39-44 ms per permutation; 17-30 at N = 10,000,
# Dx = Dy = 1024, 57-92 ms against 301-341 ms. It was 75 before the cache-sized blocks.)
GATHER_COST = 30.0


def _use_gram_null(n: int, dx: int, dy: int, n_perm: int) -> bool:
    """Per case: the N x N form when its total cost (building the two Gram matrices from their
    upper triangles, N^2 (Dx + Dy) / 2, then n_perm gathers of N^2) and its memory (two float32
    N x N) are the smaller."""
    if 2 * n * n * 4 > GRAM_NULL_MAX_BYTES:
        return False
    gram = n * n * (dx + dy) / 2 + n_perm * GATHER_COST * n * n
    return gram < n_perm * n * dx * dy


# Bytes of gathered copies per batch of permutations off CPU (_perm_batches): each step of a
# null runs once per batch, not once per permutation (fewer kernel launches on a GPU).
NULL_BATCH_BYTES = 2**30


def _perm_batches(
    perms: Iterable[Tensor], bytes_each: int, device: torch.device
) -> Iterator[Tensor]:
    """The permutations (n,) as (B, n) index tensors on device: one at a time on CPU, elsewhere
    as many as fit in NULL_BATCH_BYTES when each needs bytes_each of gathered copies."""
    size = 1 if device.type == "cpu" else max(1, NULL_BATCH_BYTES // max(bytes_each, 1))
    it = iter(perms)
    while chunk := list(itertools.islice(it, size)):
        yield torch.stack(chunk).to(device)


# Elements per gathered row block of the Gram null on CPU (_gram_null_blocked): 2 MB of float32,
# at least 64 rows. At N = 10k (2 threads, AMD Zen 4) 32-96 rows were within 10% of each other
# and 128 rows 25% slower; at N = 2011, 256 rows (this rule's 260) were the fastest of 64-512.
GRAM_NULL_BLOCK_ELEMENTS = 2**19


def _gram_null_cross(kc: Tensor, lc: Tensor, perms: Iterable[Tensor]) -> Tensor:
    """<kc, lc[p][:, p]>_F for each permutation p: (n, n), (n, n) symmetric -> (n_perm,) float64.

    = ||Y_c^T P X_c||_F^2 when kc = X_c X_c^T, lc = Y_c Y_c^T. On CPU in cache-sized row
    blocks over the upper block triangle (_gram_null_blocked), elsewhere whole matrices for a
    batch of permutations at a time (_gram_null_batched).
    """
    # In float32: half the memory traffic of float64, and twice the speed of the gathers. Each
    # value is a sum of n^2 products, accumulated in float32 along rows (CPU) or in a float32
    # GEMV (elsewhere): its rounding error relative to sqrt(<kc, kc> <lc, lc>) (the CKA
    # denominator) is about 1e-7, far below the spread of any null.
    kc, lc = kc.float(), lc.float()
    n = kc.shape[0]
    if lc.device.type == "cpu":
        block = min(n, max(64, GRAM_NULL_BLOCK_ELEMENTS // n))
        return _gram_null_blocked(kc, lc, perms, block)
    return _gram_null_batched(kc, lc, _perm_batches(perms, 8 * n * n, lc.device))


def _gram_null_blocked(kc: Tensor, lc: Tensor, perms: Iterable[Tensor], block: int) -> Tensor:
    """_gram_null_cross one permutation at a time, in row blocks of the upper block triangle.

    Both matrices are symmetric, so only the upper block triangle of kc is read: for the row
    block [i, e), rows p[i:e] of lc are gathered (index_select), then their columns p[i:]
    (gather, p[i:] broadcast over the rows), and each row is dotted with kc[i:e, i:]; the
    diagonal block counts once, the blocks right of it twice. Half the gathers of the whole
    matrix, into buffers that stay in cache: per permutation 2.1-3.0x faster at N = 10k and
    1.6x at N = 2011 than gathering the whole matrix at once (2 CPU threads); and summed row by
    row, 1e-9 to 1e-11 of the CKA denominator off the float64 value against 1e-6 to 1e-7 for
    one float32 dot of all n^2 products.
    """
    n = kc.shape[0]
    rows = torch.empty(block, n, dtype=lc.dtype, device=lc.device)
    both = torch.empty(block * n, dtype=lc.dtype, device=lc.device)
    out = []
    for p in perms:
        p = p.to(lc.device)
        total = torch.zeros((), dtype=torch.float64, device=lc.device)
        for i in range(0, n, block):
            e = min(i + block, n)
            w, m = e - i, n - i
            torch.index_select(lc, 0, p[i:e], out=rows[:w])
            g = torch.gather(rows[:w], 1, p[i:].expand(w, m), out=both[: w * m].view(w, m))
            k = kc[i:e, i:]
            total += torch.linalg.vecdot(k[:, :w], g[:, :w]).sum(dtype=torch.float64)
            if m > w:
                total += 2 * torch.linalg.vecdot(k[:, w:], g[:, w:]).sum(dtype=torch.float64)
        out.append(total)
    return torch.stack(out).cpu()


def _gram_null_batched(kc: Tensor, lc: Tensor, batches: Iterable[Tensor]) -> Tensor:
    """_gram_null_cross for batches of permutations (B, n): rows, then columns, of lc gathered
    for the whole batch, then one GEMV against kc (three kernels per batch)."""
    n = kc.shape[0]
    flat_k = kc.reshape(-1)
    out = []
    for p in batches:
        rows = lc[p]  # (B, n, n): rows p_b of lc
        both = torch.gather(rows, 2, p.unsqueeze(1).expand(-1, n, -1))
        out.append(torch.mv(both.view(p.shape[0], -1), flat_k))
    return torch.cat(out).double().cpu()


def _feature_null_cross(xc: Tensor, yc: Tensor, perms: Iterable[Tensor]) -> Tensor:
    """||Y_c^T P X_c||_F^2 for each permutation p: (n, dx), (n, dy) -> (n_perm,) float64, in
    xc's dtype; off CPU a batch of permutations per GEMM."""
    n, dx, dy = xc.shape[0], xc.shape[1], yc.shape[1]
    batches = _perm_batches(perms, (n + dx) * dy * xc.element_size(), xc.device)
    cross = [torch.matmul(yc[p].transpose(1, 2), xc).square().sum((1, 2)) for p in batches]
    return torch.cat(cross).double().cpu()


def _permuted_dots(a: Tensor, b: Tensor, perms: Iterable[Tensor]) -> Tensor:
    """a . b[p] for each permutation p: (n,), (n,) -> (n_perm,) float64."""
    batches = _perm_batches(perms, a.shape[0] * b.element_size(), b.device)
    return torch.cat([b[p] @ a for p in batches]).double().cpu()


def _sym_gram(a: Tensor, block: int = 256) -> Tensor:
    """a a^T (n, n), row-major and exactly symmetric, for a (n, d): its upper triangle
    (_upper_gram: one syrk on CPU, half the flops of a @ a.T) mirrored in blocks of rows. At
    n = 10k, d = 1,024 (float32, 2 CPU threads) 0.79 s against 1.14 s for half-triangle GEMMs
    of 1,024 rows mirrored alike."""
    g = _upper_gram(a.T)
    n = g.shape[0]
    for i in range(0, n, block):
        e = min(i + block, n)
        g[e:, i:e] = g[i:e, e:].T
        diag = g[i:e, i:e]
        diag.copy_(diag.triu() + diag.triu(1).T)
    # syrk's output is column-major: the transposed view of a symmetric matrix is itself
    return g if g.is_contiguous() else g.T


def _linear_null_cross(
    xc: Tensor, yc: Tensor, n_perm: int, seed: int, gram: bool | None = None
) -> tuple[Tensor, list[Tensor]]:
    """||Y_c^T P X_c||_F^2 for n_perm seeded permutations -> ((n_perm,) float64, the perms).

    gram=None picks the cheaper exact form (_use_gram_null); both give the same numbers up to
    rounding (float64 in feature space, float32 for the Gram form: see _gram_null_cross).
    """
    n, dx, dy = xc.shape[0], xc.shape[1], yc.shape[1]
    perms = list(_permutations(n, n_perm, seed))
    if gram is None:
        gram = _use_gram_null(n, dx, dy, n_perm)
    if gram:  # float32 Gram matrices: _gram_null_cross works in float32
        return _gram_null_cross(_sym_gram(xc.float()), _sym_gram(yc.float()), perms), perms
    return _feature_null_cross(xc, yc, perms), perms


def _linear_tests(
    x: Tensor,
    y: Tensor,
    estimators: tuple[bool, ...],
    n_perm: int,
    seed: int,
    dtype: torch.dtype,
    gram: bool | None = None,
) -> list[PermutationTest]:
    """One PermutationTest per estimator (unbiased flag), sharing the permuted cross terms."""
    t = _linear_terms(x, y, any(estimators), dtype)
    n, dx = t.z.shape[0], t.dx
    xc, yc = t.z[:, :dx], t.z[:, dx:]
    cross, perms = _linear_null_cross(xc, yc, n_perm, seed, gram)
    tests = []
    for unbiased in estimators:
        hxy, hxx, hyy = t.hsic(unbiased)
        _check_result(x, y, hxy, hxx, hyy)
        observed = _ratio(hxy, hxx, hyy)
        if unbiased:
            # the unbiased HSIC from the same cross term: only a . b changes with p
            a, b = t.a, t.b
            ab = _permuted_dots(a, b, perms)
            h = _hsic_from_sums(cross, n, ab, a.sum().double().cpu(), b.sum().double().cpu())
        else:
            h = _hsic_from_sums(cross, n, None, None, None)
        null = torch.tensor([_ratio(v, hxx, hyy) for v in h], dtype=torch.float64)
        tests.append(PermutationTest(observed, null, permutation_pvalue(observed, null)))
    return tests


def linear_cka_permutation_test(
    x: Tensor,
    y: Tensor,
    *,
    unbiased: bool = False,
    n_perm: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PermutationTest:
    """linear_cka and its null under shuffled pairing (y's rows permuted, seeded).

    Same permutations, and so the same null up to rounding, as
    permutation_test(linear_cka, x, y, n_perm=n_perm, seed=seed); faster because the centred
    matrices and the two self-HSIC terms do not change under a permutation. The permuted cross
    term ||Y_c^T P X_c||_F^2 costs N Dx Dy in feature space or, once the two N x N Gram
    matrices exist (N^2 (Dx + Dy) once), N^2 as <K_c, P^T L_c P>: the cheaper exact form is
    picked per case (_use_gram_null).
    """
    return _linear_tests(x, y, (unbiased,), n_perm, seed, dtype)[0]


def linear_cka_permutation_tests(
    x: Tensor,
    y: Tensor,
    *,
    n_perm: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[PermutationTest, PermutationTest]:
    """(biased, unbiased) linear_cka_permutation_test on the same permutations, for the cost
    of one: both nulls come from the same permuted cross terms."""
    biased, unbiased = _linear_tests(x, y, (False, True), n_perm, seed, dtype)
    return biased, unbiased


# --------------------------------------------------------------------------------------------
# kernel (Gram-matrix) CKA and RBF
# --------------------------------------------------------------------------------------------


def center_gram(k: Tensor) -> Tensor:
    """H K H without forming H: subtract row and column means, add back the grand mean.

    k: (n, n) -> (n, n). O(n^2), where a dense H would cost two O(n^3) products.
    """
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _gram_hsic_unbiased(kt: Tensor, lt: Tensor) -> Tensor:
    """Song et al.'s unbiased HSIC from Gram matrices with zeroed diagonals (n, n) -> ()."""
    n = kt.shape[0]
    kl = kt.sum(dim=0) @ lt.sum(dim=0)  # 1^T K~ L~ 1 (symmetric K~: K~ 1 = column sums)
    return ((kt * lt).sum() + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl) / (
        n * (n - 3)
    )


def _off_diagonal_sum_zero(kt: Tensor) -> Tensor:
    """kt (n, n) with a zero diagonal, its off-diagonal entries shifted to sum to 0."""
    n = kt.shape[0]
    ks = kt - kt.sum() / (n * (n - 1))
    ks.diagonal().zero_()
    return ks


def _zero_diag(k: Tensor) -> Tensor:
    k = k.clone()
    k.diagonal().zero_()
    return k


def kernel_cka(k: Tensor, l: Tensor, *, unbiased: bool = False) -> float:  # noqa: E741
    """CKA from two Gram matrices k, l (n, n) of the same n images (kernel of your choice).

    Biased: <HKH, HLH>_F / (||HKH||_F ||HLH||_F), centring done in O(n^2). Unbiased: Song et
    al.'s estimator (module docstring), n >= 4. O(n^2) time and memory.
    """
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(
            f"expected two (n, n) Gram matrices, got {tuple(k.shape)}, {tuple(l.shape)}"
        )
    _check_unbiased(k.shape[0], unbiased)
    if unbiased:
        kt, lt = _zero_diag(k), _zero_diag(l)
        return _ratio(
            _gram_hsic_unbiased(kt, lt), _gram_hsic_unbiased(kt, kt), _gram_hsic_unbiased(lt, lt)
        )
    kc, lc = center_gram(k), center_gram(l)
    return _ratio((kc * lc).sum(), kc.square().sum(), lc.square().sum())


def rbf_gram(x: Tensor, *, threshold: float = 1.0) -> Tensor:
    """RBF Gram matrix exp(-|x_i - x_j|^2 / (2 sigma^2)) with a median-distance bandwidth.

    x: (n, D) -> (n, n), dtype of x. sigma^2 = threshold^2 * median of the n(n-1)/2 squared
    distances |x_i - x_j|^2, i < j (the lower median, torch.median; Kornblith et al.'s reference
    code takes the median over the full matrix, zeros on the diagonal included).
    """
    sq = x.square().sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.T)).clamp_(min=0.0)
    d2.diagonal().zero_()
    n = x.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    med = d2[iu[0], iu[1]].median()
    if float(med) <= 0:
        raise ValueError(
            "median pairwise distance is 0 (most rows identical): the RBF bandwidth is undefined"
        )
    return torch.exp(d2 / (-2.0 * threshold**2 * med))


def _subsample(n: int, max_n: int | None, seed: int) -> Tensor | None:
    """Sorted seeded subset of max_n row indices when n > max_n, else None (use all rows)."""
    if max_n is None or n <= max_n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_n].sort().values


def _rbf_grams(
    x: Tensor, y: Tensor, threshold: float, max_n: int | None, seed: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    x, y = _pair(x, y, dtype)
    rows = _subsample(x.shape[0], max_n, seed)
    if rows is not None:
        rows = rows.to(x.device)
        x, y = x[rows], y[rows]
    _check_not_constant(x, "x")
    _check_not_constant(y, "y")
    return rbf_gram(x, threshold=threshold), rbf_gram(y, threshold=threshold)


def rbf_cka(
    x: Tensor,
    y: Tensor,
    *,
    unbiased: bool = False,
    threshold: float = 1.0,
    max_n: int | None = 5000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> float:
    """CKA with RBF kernels (median-distance bandwidth times threshold, see rbf_gram).

    x: (N, Dx), y: (N, Dy) -> float. Needs two N x N Gram matrices: O(N^2 D) time, O(N^2)
    memory (about 3 x 8 N^2 bytes in float64, 600 MB at N = 5000). Above max_n images, a seeded
    subsample of max_n rows (the same rows of x and y) is used; max_n=None uses all.
    """
    k, l = _rbf_grams(x, y, threshold, max_n, seed, dtype)  # noqa: E741
    return kernel_cka(k, l, unbiased=unbiased)


def rbf_cka_permutation_test(
    x: Tensor,
    y: Tensor,
    *,
    unbiased: bool = False,
    threshold: float = 1.0,
    max_n: int | None = 5000,
    n_perm: int = 200,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PermutationTest:
    """rbf_cka and its null under shuffled pairing, reusing the two Gram matrices.

    Permuting y's rows permutes L's rows and columns, so each permutation is O(n^2) (the
    permuted Gram product of _gram_null_cross, n = min(N, max_n)) instead of rebuilding L. The
    subsample (if any) is drawn with seed, the permutations with seed + 1.
    """
    k, l = _rbf_grams(x, y, threshold, max_n, seed, dtype)  # noqa: E741
    n = k.shape[0]
    _check_unbiased(n, unbiased)
    if unbiased:
        kt, lt = _zero_diag(k), _zero_diag(l)
        hxx, hyy = _gram_hsic_unbiased(kt, kt), _gram_hsic_unbiased(lt, lt)
        observed = _ratio(_gram_hsic_unbiased(kt, lt), hxx, hyy)
        # The unbiased HSIC does not change when a constant is added to every off-diagonal
        # entry of K~ (or L~). Shifted so that its entries sum to 0 (ks, ls), it is
        # [<ks, P ls P^T> - 2/(n-2) (ks 1) . P (ls 1)] / (n (n-3)): one permuted Gram product,
        # as the biased null's, and an O(n) term. Shifted first, the float32 product has no
        # large mean to cancel.
        ks, ls = _off_diagonal_sum_zero(kt), _off_diagonal_sum_zero(lt)
        perms = list(_permutations(n, n_perm, seed + 1))
        cross = _gram_null_cross(ks, ls, perms)
        kl = _permuted_dots(ks.sum(dim=0), ls.sum(dim=0), perms)
        h = (cross - 2.0 / (n - 2) * kl) / (n * (n - 3))
        null = torch.tensor([_ratio(v, hxx, hyy) for v in h], dtype=torch.float64)
        return PermutationTest(observed, null, permutation_pvalue(observed, null))
    kc, lc = center_gram(k), center_gram(l)
    hxx, hyy = kc.square().sum(), lc.square().sum()
    observed = _ratio((kc * lc).sum(), hxx, hyy)
    # H commutes with permutations: centring L[p][:, p] is lc[p][:, p].
    cross = _gram_null_cross(kc, lc, _permutations(n, n_perm, seed + 1))
    null = torch.tensor([_ratio(v, hxx, hyy) for v in cross], dtype=torch.float64)
    return PermutationTest(observed, null, permutation_pvalue(observed, null))


# --------------------------------------------------------------------------------------------
# generic permutation null
# --------------------------------------------------------------------------------------------


def permutation_test(
    score: Callable[[Tensor, Tensor], float],
    x: Tensor,
    y: Tensor,
    *,
    n_perm: int = 1000,
    seed: int = 0,
) -> PermutationTest:
    """Any similarity score(x, y) and its null under shuffled pairing (y's rows permuted).

    x: (N, Dx), y: (N, Dy). p = (#{null >= observed} + 1) / (n_perm + 1) (one-sided: "more
    similar than chance"). n_perm + 1 calls of score; seeded, so the null is reproducible.
    """
    check_features(x, "x")
    check_features(y, "y")
    check_same_n(x.shape[0], y.shape[0])
    observed = float(score(x, y))
    null = torch.tensor(
        [float(score(x, y[p.to(y.device)])) for p in _permutations(x.shape[0], n_perm, seed)],
        dtype=torch.float64,
    )
    return PermutationTest(observed, null, permutation_pvalue(observed, null))
