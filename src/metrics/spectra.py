"""Spectra of token matrices: effective ranks (energy, Roy-Vetterli), top-k energy, k80/k90.

For a matrix X (T, D) with rows centred (the mean token subtracted) and singular values s:
  p = s^2 / sum(s^2)                energy share of each component
  erank_energy = exp(H(p))          what the connector study reported as "effective rank"
  erank_rv     = exp(H(s / sum(s))) Roy & Vetterli (2007)'s effective rank
  *_norm       = erank / min(T, D)  (centring leaves rank <= min(T - 1, D), so a T <= D matrix
                                     tops out at (T - 1) / T)
  topK_energy  = sum of the K largest p (1 when K >= the number of components)
  k80, k90     = smallest number of components whose energy reaches 80% / 90%
  rank         = number of non-zero singular values (after a matrix_rank-style rounding floor)
H is the Shannon entropy in nats with 0 log 0 = 0. With standardize=True every channel is first
z-scored over the rows (a few huge channels otherwise decide the whole spectrum); a channel that
is constant over the rows (max == min, exactly) becomes 0 instead of 0/0.

A matrix whose rows are all identical has nothing left after centring: every statistic of it is
NaN (rank 0), documented rather than raised so one such image does not stop a batch. T = 1 with
centring is an error for the same reason, as are empty and non-finite inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor

TOP_K: tuple[int, ...] = (1, 5, 10)
# Tolerance on the cumulative energy for k80 / k90: singular values carry float32 rounding, so an
# isotropic rank-5 matrix reaches 0.8 at 4 components only up to ~1e-7.
_ENERGY_TOL = 1e-6


def _check_tokens(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected (..., T, D), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty input, shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(start_dim=-2).any(dim=-1).nonzero().flatten()
        raise ValueError(f"{name}: NaN or Inf values (in matrices {bad[:5].tolist()} ...)")


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def standardize_channels(x: Tensor) -> Tensor:
    """Z-score each channel over the rows: (..., T, D) -> (..., T, D), population std.

    Channels constant over the rows (max == min, an exact test) become 0: their variance is 0 and
    the ratio would be 0/0 (or rounding noise blown up to unit variance).
    """
    x = x.to(_compute_dtype(x))
    mean = x.mean(dim=-2, keepdim=True)
    std = x.std(dim=-2, correction=0, keepdim=True)
    constant = x.amax(dim=-2, keepdim=True) == x.amin(dim=-2, keepdim=True)
    return torch.where(constant, 0.0, (x - mean) / torch.where(constant, 1.0, std))


def centered_singular_values(x: Tensor, *, standardize: bool = False) -> Tensor:
    """Singular values of each centred (or channel-standardised) matrix, largest first.

    x: (..., T, D) with T >= 2 -> (..., min(T, D)), float32 (float64 for float64 input).
    Channels constant over the rows (max == min) are set to exactly 0 after centring, so identical
    rows give rank 0 rather than a spectrum of rounding residue; then, as numpy's matrix_rank
    does, values at or below max(T, D) * eps * s_max are rounding and set to 0.
    """
    _check_tokens(x)
    t, d = x.shape[-2], x.shape[-1]
    if t < 2:
        raise ValueError(f"T={t} token(s) per matrix: nothing is left after centring (need T >= 2)")
    x = x.to(_compute_dtype(x))
    if standardize:
        xc = standardize_channels(x)
    else:
        constant = x.amax(dim=-2, keepdim=True) == x.amin(dim=-2, keepdim=True)
        xc = torch.where(constant, 0.0, x - x.mean(dim=-2, keepdim=True))
    s = torch.linalg.svdvals(xc)
    floor = (max(t, d) * torch.finfo(x.dtype).eps) * s[..., :1]
    return torch.where(s > floor, s, 0.0)


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy in nats over the last dim, 0 log 0 = 0. (..., r) -> (...)."""
    return -(torch.where(p > 0, p * torch.log(p), 0.0)).sum(dim=-1)


def spectral_summary(
    s: Tensor, *, size: int | None = None, top_k: Sequence[int] = TOP_K
) -> dict[str, Tensor]:
    """Statistics of singular values s (..., r), largest first -> {name: (...) float64}.

    size: what the *_norm values divide by, min(T, D) (default r, right for svdvals output).
    Names: erank_energy, erank_rv, erank_energy_norm, erank_rv_norm, top{K}_energy for K in
    top_k, k80, k90, rank (k80 / k90 / rank are whole numbers stored as float so that a rank-0
    matrix can be NaN in all of them).
    """
    s = s.double()
    size = s.shape[-1] if size is None else size
    total_energy = (s * s).sum(dim=-1, keepdim=True)
    total_s = s.sum(dim=-1, keepdim=True)
    empty = total_s.squeeze(-1) == 0  # rank 0: every statistic undefined
    p = s * s / torch.where(total_energy > 0, total_energy, 1.0)
    q = s / torch.where(total_s > 0, total_s, 1.0)
    out: dict[str, Tensor] = {}
    out["erank_energy"] = torch.exp(_entropy(p))
    out["erank_rv"] = torch.exp(_entropy(q))
    out["erank_energy_norm"] = out["erank_energy"] / size
    out["erank_rv_norm"] = out["erank_rv"] / size
    cum = p.cumsum(dim=-1)
    for k in top_k:
        out[f"top{k}_energy"] = cum[..., min(k, s.shape[-1]) - 1].clamp(max=1.0)
    for level in (80, 90):
        reached = cum >= level / 100 - _ENERGY_TOL
        out[f"k{level}"] = (~reached).sum(dim=-1).double() + 1
    out["rank"] = (s > 0).sum(dim=-1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=s.device)
    return {name: torch.where(empty, nan, v) for name, v in out.items()}


def token_spectra(
    tokens: Tensor | Sequence[Tensor],
    *,
    standardize: bool = False,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Per-image spectral_summary of centred token matrices.

    tokens: (B, T, D), or a sequence of B tensors (T_i, D) whose token counts may differ (images
    of equal T are batched together) -> {name: (B,) float64} in input order, normalised by
    min(T_i, D). batch_size bounds how many matrices go through one batched SVD.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if isinstance(tokens, Tensor):
        if tokens.ndim != 3 or tokens.shape[0] == 0:
            raise ValueError(f"tokens: expected (B, T, D) with B >= 1, got {tuple(tokens.shape)}")
        n_images = tokens.shape[0]
        # one token count: slice, no per-image copies
        batches: Iterator[tuple[list[int], Tensor]] = (
            (list(range(s, min(s + batch_size, n_images))), tokens[s : s + batch_size])
            for s in range(0, n_images, batch_size)
        )
    else:
        mats = list(tokens)
        if not mats:
            raise ValueError("tokens: no images")
        if any(not isinstance(m, Tensor) or m.ndim != 2 for m in mats) or (
            len({m.shape[-1] for m in mats}) != 1
        ):
            shapes = sorted({tuple(getattr(m, "shape", ())) for m in mats})[:5]
            raise ValueError(f"tokens: expected (T_i, D) matrices with one D, got shapes {shapes}")
        n_images = len(mats)
        groups: dict[int, list[int]] = {}
        for i, m in enumerate(mats):
            groups.setdefault(m.shape[0], []).append(i)
        # lazily stacked, so only one batch is copied at a time
        batches = (
            (chunk, torch.stack([mats[i] for i in chunk]))
            for members in groups.values()
            for chunk in (members[s : s + batch_size] for s in range(0, len(members), batch_size))
        )
    out: dict[str, Tensor] = {}
    for chunk, batch in batches:
        try:
            s = centered_singular_values(batch, standardize=standardize)
        except ValueError as err:
            raise ValueError(f"tokens (images {chunk[:5]}...): {err}") from err
        for name, v in spectral_summary(s, size=s.shape[-1]).items():  # size = min(T, D)
            if name not in out:
                out[name] = torch.empty(n_images, dtype=torch.float64)
            out[name][torch.tensor(chunk)] = v.cpu()
    return out


def dataset_singular_values(
    x: Tensor | Iterable[Tensor], *, standardize: bool = False
) -> tuple[Tensor, int]:
    """Singular values of the centred pooled matrix (N, D), streamed over row chunks.

    x: one (N, D) tensor or an iterable of (n_i, D) chunks (e.g. one per vector file) -> (s
    (min(N, D),) float64 largest first, N). Never holds more than one chunk plus D x D: the
    scatter matrix is accumulated in float64 around the first chunk's mean (a shift that keeps
    the cancellation in X^T X - N m m^T small), then s = sqrt(eigvalsh). Eigenvalues at or below
    D * eps64 * the largest are rounding and set to 0. With standardize the scatter is scaled to
    a correlation matrix; channels constant over all rows (max == min) get 0.
    """
    chunks = [x] if isinstance(x, Tensor) else x
    n = 0
    shift = total = scatter = lo = hi = None
    for i, c in enumerate(chunks):
        if not isinstance(c, Tensor) or c.ndim != 2 or c.numel() == 0:
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"chunk {i}: expected a non-empty (n, D) tensor, got {shape}")
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"chunk {i}: NaN or Inf values")
        c = c.double()
        if shift is None:
            shift = c.mean(dim=0)
            total = torch.zeros_like(shift)
            scatter = torch.zeros(c.shape[1], c.shape[1], dtype=torch.float64, device=c.device)
            lo, hi = c.amin(dim=0), c.amax(dim=0)
        elif c.shape[1] != shift.shape[0]:
            raise ValueError(f"chunk {i}: D={c.shape[1]}, earlier chunks D={shift.shape[0]}")
        else:
            lo, hi = torch.minimum(lo, c.amin(dim=0)), torch.maximum(hi, c.amax(dim=0))
        c = c - shift.to(c.device)
        total += c.sum(dim=0)
        scatter += c.T @ c
        n += c.shape[0]
    if shift is None:
        raise ValueError("no rows: the input has no chunks")
    if n < 2:
        raise ValueError(f"N={n} row(s): nothing is left after centring (need N >= 2)")
    mean = total / n
    cov = scatter - n * torch.outer(mean, mean)  # centred scatter X_c^T X_c
    # Constant channels have exactly zero variance; zero them rather than keep rounding residue.
    keep = (hi != lo).double()
    if standardize:
        var = cov.diagonal() / n
        keep = keep * (var > 0)
        keep = keep / torch.where(keep > 0, var, 1.0).sqrt()
    cov = cov * keep.unsqueeze(0) * keep.unsqueeze(1)
    lam = torch.linalg.eigvalsh((cov + cov.T) / 2).flip(0)
    # eigvalsh is accurate to about D * eps * lambda_max; anything below is rounding.
    floor = lam[0].clamp(min=0) * lam.shape[0] * torch.finfo(torch.float64).eps
    lam = torch.where(lam > floor, lam, 0.0)
    return lam[: min(n, lam.shape[0])].sqrt(), n


def dataset_spectra(x: Tensor | Iterable[Tensor], *, standardize: bool = False) -> dict[str, float]:
    """spectral_summary of the pooled dataset matrix (N, D) (see dataset_singular_values).

    -> {name: float}, normalised by min(N, D); NaN everywhere when all rows are identical.
    """
    s, _ = dataset_singular_values(x, standardize=standardize)
    return {name: float(v) for name, v in spectral_summary(s, size=s.shape[0]).items()}
