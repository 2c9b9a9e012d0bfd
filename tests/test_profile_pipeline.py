"""bench/profile_pipeline.py's attribution: nested entry points are counted once, by rank, and
the categories add up to the wall time; patched functions are replaced where they are bound and
restored afterwards."""

from __future__ import annotations

import sys
import types

from bench.profile_pipeline import Attributor, Patches


def test_nested_entries_are_counted_once_by_rank():
    now = [0.0]
    a = Attributor(clock=lambda: now[0])

    def work(dt: float) -> None:
        now[0] += dt

    forward = a.wrap("forward", lambda: work(2))

    def metric_body() -> None:  # a metric that runs a network inside: 1 + forward 2 + 3
        work(1)
        forward()
        work(3)

    metric = a.wrap("metric", metric_body)
    load = a.wrap("load", lambda: (work(1), metric()))  # everything inside a load is load
    a.reset()
    work(0.5)
    metric()
    load()
    t = a.finish()
    assert t == {"load": 7, "decode": 0, "forward": 2, "io": 0, "metric": 4, "other": 0.5}
    assert sum(t.values()) == now[0]


def test_patches_replace_every_binding_and_restore(monkeypatch):
    lib, user = types.ModuleType("toy_lib"), types.ModuleType("toy_user")

    def f() -> int:
        return 1

    lib.f = user.g = f  # `from toy_lib import f as g`
    monkeypatch.setitem(sys.modules, "toy_lib", lib)
    monkeypatch.setitem(sys.modules, "toy_user", user)
    a = Attributor()
    patches = Patches(a)
    patches.function("io", "toy_lib", "f")
    a.reset()
    assert user.g() == 1 and lib.f is user.g and lib.f is not f
    assert a.open["io"] == 0
    patches.restore()
    assert lib.f is f and user.g is f
