"""Contrastive MRL loss, retrieval both directions, zero-shot and linear probe, each against
values worked out by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from src.metrics.contrastive import info_nce, mrl_info_nce
from src.metrics.probe import (
    class_vectors,
    linear_probe,
    mean_per_class_recall,
    per_class_recall,
    topk_hits,
    zero_shot_logits,
)
from src.metrics.retrieval import (
    chance_mrr,
    chance_recall,
    image_to_text_ranks,
    retrieval_rows,
    text_to_image_ranks,
)
from src.metrics.stats import bootstrap_statistic


def _hand_info_nce(a: torch.Tensor, b: torch.Tensor, s: float) -> float:
    """-1/(2B) sum_i [log softmax_j(s a_i.b_j)_i + log softmax_j(s b_i.a_j)_i], as loops."""
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        row = [s * float(a[i] @ b[j]) for j in range(n)]
        col = [s * float(b[i] @ a[j]) for j in range(n)]
        total -= row[i] - math.log(sum(math.exp(v) for v in row))
        total -= col[i] - math.log(sum(math.exp(v) for v in col))
    return total / (2 * n)


def test_mrl_loss_counts_each_radius_once_with_its_weight():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    scale = torch.tensor(2.5)
    total, per = mrl_info_nce(img, txt, scale, radii=[2, 4], weights=[0.3, 0.7])
    hand = [
        _hand_info_nce(F.normalize(img[:, :r], dim=-1), F.normalize(txt[:, :r], dim=-1), 2.5)
        for r in (2, 4)
    ]
    assert per.tolist() == pytest.approx(hand, abs=1e-6)
    assert float(total) == pytest.approx(0.3 * hand[0] + 0.7 * hand[1], abs=1e-6)
    # seed E's total (mean over radii + the full-width loss again) is not what we compute
    equal, _ = mrl_info_nce(img, txt, scale, radii=[2, 4], weights=[0.5, 0.5])
    assert float(equal) == pytest.approx(sum(hand) / 2, abs=1e-6)
    assert float(equal) != pytest.approx(sum(hand) / 2 + hand[1], abs=1e-3)
    with pytest.raises(ValueError, match="distinct"):
        mrl_info_nce(img, txt, scale, radii=[4, 4], weights=[0.5, 0.5])


def test_info_nce_of_perfect_orthogonal_pairs():
    e = torch.eye(2)
    # each row: log(1 + e^-s) in both directions
    assert float(info_nce(e, e, torch.tensor(3.0))) == pytest.approx(math.log(1 + math.exp(-3)))


@pytest.fixture
def three_images():
    """3 images, 5 captions: image 0 owns captions 0 and 1, image 1 caption 2, image 2
    captions 3 and 4. sim[j, i] = score of caption j with image i."""
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # cap0 -> img0 first: rank 1
            [0.1, 0.5, 0.3],  # cap1 -> img0 last: rank 3
            [0.6, 0.6, 0.1],  # cap2 -> img1 ties img0 (a tie counts against it): rank 2
            [0.2, 0.3, 0.1],  # cap3 -> img2 last: rank 3
            [0.0, 0.2, 0.4],  # cap4 -> img2 first: rank 1
        ]
    )
    return sim, torch.tensor([0, 0, 1, 2, 2])


def test_text_to_image_ranks_by_hand(three_images):
    sim, owner = three_images
    assert text_to_image_ranks(sim, owner).tolist() == [1, 3, 2, 3, 1]


def test_image_to_text_ranks_take_the_best_caption(three_images):
    sim, owner = three_images
    # img0's column: 0.9 0.1 0.6 0.2 0.0 -> cap0 rank 1 (cap1 would be rank 4)
    # img1's column: 0.1 0.5 0.6 0.3 0.2 -> cap2 rank 1
    # img2's column: 0.2 0.3 0.1 0.1 0.4 -> cap4 rank 1 ... cap3 (0.1) would be rank 4
    assert image_to_text_ranks(sim, owner).tolist() == [1, 1, 1]
    sim2 = sim.clone()
    sim2[4, 2] = 0.25  # img2 now: 0.2 0.3 0.1 0.1 0.25 -> cap4 rank 2 (behind cap1 0.3)
    assert image_to_text_ranks(sim2, owner).tolist() == [1, 1, 2]


def test_retrieval_rows_recall_mrr_and_chance(three_images):
    sim, owner = three_images
    rows = {
        (r["direction"], r["metric"]): r for r in retrieval_rows(sim, owner, ks=(1, 2), n_boot=50)
    }
    t2i = rows[("text_to_image", "R@1")]
    assert t2i["value"] == pytest.approx(2 / 5) and t2i["n"] == 5
    assert rows[("text_to_image", "R@2")]["value"] == pytest.approx(3 / 5)
    assert rows[("text_to_image", "MRR")]["value"] == pytest.approx(
        (1 + 1 / 3 + 1 / 2 + 1 / 3 + 1) / 5
    )
    assert t2i["chance"] == pytest.approx(1 / 3)
    assert rows[("image_to_text", "R@1")]["value"] == 1.0
    # image->text chance at k=1: images with 2 of 5 captions 2/5, with 1 caption 1/5
    assert rows[("image_to_text", "R@1")]["chance"] == pytest.approx((2 / 5 + 1 / 5 + 2 / 5) / 3)
    assert t2i["ci_low"] <= t2i["value"] <= t2i["ci_high"]


def test_chance_levels_by_hand():
    # one positive among n: R@k = k / n, MRR = H_n / n
    assert chance_recall(10, 1, 3) == pytest.approx(0.3)
    assert chance_mrr(4, 1) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # 2 positives among 4, k = 1: 1/2; k = 2: 1 - C(2,2)/C(4,2) = 5/6
    assert chance_recall(4, 2, 1) == pytest.approx(0.5)
    assert chance_recall(4, 2, 2) == pytest.approx(5 / 6)
    # best of 2 among 3: P(rank 1) = 2/3, P(rank 2) = 1/3
    assert chance_mrr(3, 2) == pytest.approx(2 / 3 + 1 / 6)


def test_zero_shot_by_hand():
    # class 0's templates point along x and y -> class vector (1, 1)/sqrt2; class 1 along -x
    templates = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [-3.0, 0.0]]])
    cv = class_vectors(templates)
    assert cv.flatten().tolist() == pytest.approx([2**-0.5, 2**-0.5, -1.0, 0.0])
    images = torch.tensor([[1.0, 0.2], [-1.0, 0.1], [0.1, -1.0]])
    scores = zero_shot_logits(images, cv)
    pred = scores.argmax(1)
    # image 2: (0.1, -1)/|.|: class 0 score (0.1 - 1)/sqrt2 < 0, class 1 score -0.1 -> class 1
    assert pred.tolist() == [0, 1, 1]
    labels = torch.tensor([0, 1, 0])
    assert topk_hits(scores, labels, 1).tolist() == [1.0, 1.0, 0.0]
    assert topk_hits(scores, labels, 2).tolist() == [1.0, 1.0, 1.0]
    assert per_class_recall(pred, labels, 3)[:2].tolist() == [0.5, 1.0]
    assert math.isnan(float(per_class_recall(pred, labels, 3)[2]))
    assert mean_per_class_recall(pred, labels, 3) == pytest.approx(0.75)


def test_linear_probe_picks_c_on_val_and_refits_on_train_and_val():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])

    def draw(n):
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 3, generator=g), y

    (tx, ty), (vx, vy), (sx, sy) = draw(30), draw(12), draw(15)
    fit = linear_probe(tx, ty, vx, vy, sx, c_grid=(0.01, 1.0, 100.0))
    assert set(fit.val_accuracy) == {0.01, 1.0, 100.0}
    best = max(fit.val_accuracy.values())
    assert fit.c == min(c for c, a in fit.val_accuracy.items() if a == best)
    ref = LogisticRegression(C=fit.c, max_iter=1000, random_state=0).fit(
        F.normalize(torch.cat([tx, vx]).double(), dim=-1).numpy(), torch.cat([ty, vy]).numpy()
    )
    assert fit.pred.tolist() == ref.predict(F.normalize(sx.double(), dim=-1).numpy()).tolist()
    assert (fit.pred == sy).double().mean() > 0.8


def test_bootstrap_statistic_of_a_constant_and_of_a_nan():
    assert bootstrap_statistic(lambda idx: 0.5, 10, n_boot=20) == (0.5, 0.5)
    lo, hi = bootstrap_statistic(lambda idx: float("nan"), 10, n_boot=5)
    assert math.isnan(lo) and math.isnan(hi)
