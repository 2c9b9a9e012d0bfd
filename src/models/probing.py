"""eval_probe's protocols on local labelled data (CLIP_benchmark's zero-shot classification,
linear probe, retrieval), from cached pooled features to tidy rows with bootstrap CIs and chance
levels. The metric functions themselves are src.metrics.probe / src.metrics.retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from src.data.labels import LABELERS, templates
from src.data.pooled import Pooled, captions_of, split_of
from src.errors import UserError
from src.metrics.probe import (
    class_vectors,
    linear_probe,
    mean_per_class_recall,
    topk_hits,
    zero_shot_logits,
)
from src.metrics.retrieval import retrieval_rows
from src.metrics.stats import bootstrap_statistic, summarize


def splits(pooled: Pooled, val: float, test: float, seed: int) -> list[str]:
    """train / val / test of each image, the hash split train_align uses (same defaults, so
    the probe's test images are held out from the dual encoder's training too)."""
    return [split_of(k, val, test, seed) for k in pooled.keys]


def labels(pooled: Pooled, family: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(rows of the labelled images (n,), class index of each (n,), class names sorted)."""
    if family not in LABELERS:
        raise UserError(f"unknown label family {family!r}; known: {', '.join(LABELERS)}")
    found = [(i, LABELERS[family](p, k.split("/")[0])) for i, (p, k) in
             enumerate(zip(pooled.paths, pooled.keys, strict=True))]  # fmt: skip
    found = [(i, c) for i, c in found if c is not None]
    classes = sorted({c for _, c in found})
    index = {c: j for j, c in enumerate(classes)}
    rows = torch.tensor([i for i, _ in found], dtype=torch.long)
    return rows, torch.tensor([index[c] for _, c in found], dtype=torch.long), classes


def accuracy_rows(
    scores: torch.Tensor | None,
    pred: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    majority: float,
    n_boot: int,
) -> list[dict[str, Any]]:
    """acc@1 (and acc@5 from scores when there are >= 5 classes) and mean per-class recall,
    each with a bootstrap CI over test images, the uniform chance level and the majority-class
    baseline (acc@1; a constant predictor's mean per-class recall is 1 / C)."""
    rows = []
    hits = {"acc@1": (pred == y).double()}
    if scores is not None and n_classes >= 5:
        hits["acc@5"] = topk_hits(scores, y, 5)
    for name, h in hits.items():
        s = summarize(h, n_boot=n_boot)
        k = 1 if name == "acc@1" else 5
        rows.append({"metric": name, "value": s["mean"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "chance": k / n_classes,
                     "majority": majority if k == 1 else None, "n": s["n"]})  # fmt: skip
    lo, hi = bootstrap_statistic(
        lambda idx: mean_per_class_recall(pred[idx], y[idx], n_classes), len(y), n_boot
    )
    rows.append({"metric": "mean_per_class_recall",
                 "value": mean_per_class_recall(pred, y, n_classes), "ci_low": lo,
                 "ci_high": hi, "chance": 1 / n_classes, "majority": 1 / n_classes,
                 "n": len(y)})  # fmt: skip
    return rows


def _majority(y_train: torch.Tensor, y_test: torch.Tensor, n_classes: int) -> float:
    """Test accuracy of always answering the training split's most frequent class."""
    top = int(torch.bincount(y_train, minlength=n_classes).argmax())
    return float((y_test == top).double().mean())


def zero_shot(joint: Any, image: torch.Tensor, split: list[str], pooled: Pooled,
              families: Sequence[str], n_boot: int) -> list[dict[str, Any]]:  # fmt: skip
    """Zero-shot rows per label family on the test split. image: (N, d) unit joint-space
    features of pooled's images."""
    out = []
    for family in families:
        rows, y, classes = labels(pooled, family)
        is_test = torch.tensor([split[i] == "test" for i in rows.tolist()], dtype=torch.bool)
        if len(classes) < 2 or not is_test.any():
            continue
        # one class vector per class (a class's templates may differ in number): (C, d)
        cv = torch.cat([class_vectors(joint.encode_text(templates(family, c))[None])
                        for c in classes])  # fmt: skip
        scores = zero_shot_logits(image[rows[is_test]], cv)
        ytr = y[torch.tensor([split[i] == "train" for i in rows.tolist()])]
        maj = _majority(ytr if len(ytr) else y, y[is_test], len(classes))
        for r in accuracy_rows(scores, scores.argmax(1), y[is_test], len(classes), maj, n_boot):
            out.append({"family": family, "protocol": "zero_shot", "n_classes": len(classes),
                        "classes": "|".join(classes), **r})  # fmt: skip
    return out


def linear(features: torch.Tensor, split: list[str], pooled: Pooled, families: Sequence[str],
           c_grid: Sequence[float], n_boot: int) -> list[dict[str, Any]]:  # fmt: skip
    """Linear-probe rows per label family: C chosen on val, refit on train + val, test."""
    out = []
    for family in families:
        rows, y, classes = labels(pooled, family)
        part = {s: torch.tensor([split[i] == s for i in rows.tolist()], dtype=torch.bool)
                for s in ("train", "val", "test")}  # fmt: skip
        if len(classes) < 2 or any(int(m.sum()) == 0 for m in part.values()):
            continue
        if len(torch.unique(y[part["train"]])) < 2:
            continue
        x = features[rows]
        fit = linear_probe(x[part["train"]], y[part["train"]], x[part["val"]], y[part["val"]],
                           x[part["test"]], c_grid=c_grid)  # fmt: skip
        maj = _majority(y[part["train"]], y[part["test"]], len(classes))
        for r in accuracy_rows(None, fit.pred, y[part["test"]], len(classes), maj, n_boot):
            out.append({"family": family, "protocol": "linear_probe", "n_classes": len(classes),
                        "classes": "|".join(classes), "c": fit.c, **r})  # fmt: skip
    return out


def retrieval(joint: Any, image: torch.Tensor, split: list[str], pooled: Pooled,
              n_boot: int) -> list[dict[str, Any]]:  # fmt: skip
    """Both directions' R@1/5/10 and MRR over the test images that have captions."""
    caps, _ = captions_of(pooled)
    test = [i for i, s in enumerate(split) if s == "test" and caps[i]]
    if len(test) < 2:
        return []
    texts = [t for i in test for t in caps[i]]
    owner = torch.tensor([j for j, i in enumerate(test) for _ in caps[i]], dtype=torch.long)
    sim = joint.encode_text(texts) @ image[test].T
    return retrieval_rows(sim, owner, n_boot=n_boot)


def cache_name(tower: str) -> str:
    """A tower name, id or folder as one folder name of the feature cache."""
    return tower.replace("\\", "/").strip("/").replace("/", "--") or "tower"


def vision_features(
    name: str,
    root: Any,
    shards: list[str],
    caches: dict[str, Any],
    cache_root: Any,
    **kw: Any,
) -> Pooled:
    """Pooled features of `name` (a tower name / id / folder; a dual encoder folder gives its
    joint-space image vectors from its own tower's cached features). caches: tower -> an
    existing cache folder (an extract_clip output), else <cache_root>/<cache_name(tower)>."""
    from pathlib import Path

    from src.data.pooled import pooled_features
    from src.models.dual_encoder import is_dual_encoder
    from src.models.joint import DualJoint

    def cache(tower: str) -> Path:
        return Path(caches.get(tower) or Path(cache_root) / cache_name(tower))

    if is_dual_encoder(name):
        joint = DualJoint(Path(name), kw.pop("device"), kw.pop("dtype"))
        return joint.image_features(root, shards, cache(joint.dual.config.vision), **kw)
    return pooled_features(root, shards, name, cache(name), **kw)
