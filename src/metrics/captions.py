"""Caption-level label metrics: which attribute word a caption names first, and its accuracy."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence


def first_mention(caption: str, vocab: Sequence[str]) -> str | None:
    """The vocabulary word that appears earliest in the caption (whole words; plural 's'/'es'
    accepted), or None. Ties at one position go to the longer word ('light blue' over 'blue')."""
    best: tuple[int, int, str] | None = None
    text = caption.lower()
    for word in vocab:
        m = re.search(rf"\b{re.escape(word.lower())}(?:s|es)?\b", text)
        if m and (best is None or (m.start(), -len(word)) < (best[0], best[1])):
            best = (m.start(), -len(word), word)
    return best[2] if best else None


def attribute_accuracy(
    captions: Sequence[str], truth: Sequence[str], vocab: Sequence[str]
) -> float:
    """Share of captions whose first-mentioned vocabulary word equals the true value."""
    if len(captions) != len(truth):
        raise ValueError(f"{len(captions)} captions for {len(truth)} labels")
    if not captions:
        raise ValueError("no captions to score")
    hits = sum(first_mention(c, vocab) == t for c, t in zip(captions, truth, strict=True))
    return hits / len(captions)


def majority_baseline(train_truth: Sequence[str], test_truth: Sequence[str]) -> tuple[str, float]:
    """Always answering the most frequent training value: (value, accuracy on test_truth)."""
    if not train_truth or not test_truth:
        raise ValueError("majority baseline needs training and test labels")
    value = Counter(train_truth).most_common(1)[0][0]
    return value, sum(t == value for t in test_truth) / len(test_truth)
