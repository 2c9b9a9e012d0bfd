"""The measure registry's permutation tests: a null family's one call equals each member's own."""

from __future__ import annotations

import pytest
import torch

from src.errors import UserError
from src.metrics.measures import MEASURES, NULL_FAMILIES, null_measures, permutation_tests
from src.metrics.similarity import PermutationTest


def _related(n: int = 50, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 9, generator=g)
    return x, x[:, :5] @ torch.randn(5, 6, generator=g) + 0.5 * torch.randn(n, 6, generator=g)


def _same(a: PermutationTest, b: PermutationTest) -> None:
    assert a.observed == b.observed and a.p_value == b.p_value
    assert torch.equal(a.null, b.null)


def test_every_family_is_registered_and_has_several_members():
    for name, m in MEASURES.items():
        if m.null_family is not None:
            assert m.null_family in NULL_FAMILIES and m.null is not None, name
    for family in NULL_FAMILIES:
        assert sum(m.null_family == family for m in MEASURES.values()) >= 2


@pytest.mark.parametrize("max_n", [None, 30])
def test_shared_family_equals_each_measure_alone(max_n):
    x, y = _related()
    names = ["cka_rbf", "cka_linear_unbiased", "cka_linear", "cka_rbf_unbiased"]
    tests = permutation_tests(names, x, y, n_perm=40, seed=5, max_n=max_n)
    assert list(tests) == names  # the order asked for
    for name in names:
        m = MEASURES[name]
        kw = {"max_n": max_n} if m.subsample else {}
        _same(tests[name], m.null(x, y, n_perm=40, seed=5, **kw))
        assert tests[name].null.numel() == 40
    # the subsample is real: 30 of 50 images give another RBF value
    if max_n is not None:
        assert tests["cka_rbf"].observed != MEASURES["cka_rbf"].fn(x, y)
        assert tests["cka_rbf"].observed == MEASURES["cka_rbf"].fn(x, y, max_n=max_n, seed=5)
    # the linear pair is one call: alone, each member still gives the same numbers
    alone = permutation_tests(["cka_linear_unbiased"], x, y, n_perm=40, seed=5)
    _same(alone["cka_linear_unbiased"], tests["cka_linear_unbiased"])
    assert tests["cka_linear"].p_value < 0.05  # related data, far beyond the null
    other_seed = permutation_tests(["cka_linear"], x, y, n_perm=40, seed=6)["cka_linear"]
    assert not torch.equal(other_seed.null, tests["cka_linear"].null)


def test_unknown_or_unnull_measures_are_named():
    with pytest.raises(UserError, match="unknown measure 'cka_lin'; known: cka_linear, "):
        null_measures(["cka_linear", "cka_lin"])
    with pytest.raises(UserError, match="no permutation null for knn_overlap; measures with one"):
        null_measures(["knn_overlap"])
    assert [m.name for m in null_measures(["cka_rbf", "cka_rbf"])] == ["cka_rbf"]
