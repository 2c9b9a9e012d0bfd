"""Classification probes of an embedding (CLIP_benchmark's protocols): zero-shot with prompt
templates and a linear probe whose regularisation is chosen on a validation split. Pure
functions of tensors / arrays, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Inverse regularisation strengths tried by the linear probe (scikit-learn's C = 1 / (wd * n)).
DEFAULT_C_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def class_vectors(template_embeddings: torch.Tensor) -> torch.Tensor:
    """(C, T, D) text embeddings of each class under T templates -> (C, D) unit class vectors:
    the normalised mean of the normalised template embeddings."""
    return F.normalize(F.normalize(template_embeddings, dim=-1).mean(1), dim=-1)


def zero_shot_logits(image: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """image (N, D), classes (C, D) unit rows -> (N, C) cosine scores."""
    return F.normalize(image, dim=-1) @ classes.T


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """scores (N, C), labels (N,) -> (N,) float 1.0 where the label is among the k highest
    scores (ties broken by class index, the lower first)."""
    pos = scores.gather(1, labels[:, None])
    cols = torch.arange(scores.shape[1])[None]
    ahead = (scores > pos) | ((scores == pos) & (cols < labels[:, None]))
    return (ahead.sum(1) < k).double()


def per_class_recall(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """pred, labels (N,) -> (C,) recall of each class; NaN for a class absent from labels."""
    hit = torch.zeros(n_classes, dtype=torch.float64).index_add_(
        0, labels, (pred == labels).double()
    )
    count = torch.bincount(labels, minlength=n_classes).double()
    return torch.where(count > 0, hit / count.clamp(min=1), torch.nan)


def mean_per_class_recall(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> float:
    """Mean of per_class_recall over the classes present in labels (balanced accuracy)."""
    return float(per_class_recall(pred, labels, n_classes).nanmean())


@dataclass
class LinearProbe:
    """What linear_probe returns: test predictions (N_test,), the C chosen, the validation
    accuracy per C tried."""

    pred: torch.Tensor
    c: float
    val_accuracy: dict[float, float]


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    test_x: torch.Tensor,
    *,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    seed: int = 0,
) -> LinearProbe:
    """Multinomial logistic regression on L2-normalised features (N, D): each C of c_grid is fit
    on train and scored (accuracy) on val; the best C (the smallest on a tie) is refit on
    train + val and predicts test.

    The fits run on one BLAS / OpenMP thread: their products are small (N x D by D x C), and
    with torch's OpenMP pool loaded beside scikit-learn's and OpenBLAS's, two threads per pool
    ran the same fits 2.8x slower on a 2-core machine. One thread also makes the result the same
    on any machine: at a large C, where L-BFGS stops at its tolerance, the summation order of
    two threads had moved 3 of 394 test predictions."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    def norm(x: torch.Tensor) -> np.ndarray:
        return F.normalize(x.double(), dim=-1).numpy()

    def fit(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)

    tx, vx, sx = norm(train_x), norm(val_x), norm(test_x)
    ty, vy = train_y.numpy(), val_y.numpy()
    with threadpool_limits(limits=1):
        scores = {float(c): float((fit(tx, ty, c).predict(vx) == vy).mean()) for c in c_grid}
        best = max(scores, key=lambda c: (scores[c], -c))
        model = fit(np.concatenate([tx, vx]), np.concatenate([ty, vy]), best)
        pred = model.predict(sx)
    return LinearProbe(torch.from_numpy(pred).long(), best, scores)
