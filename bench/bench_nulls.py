"""Benchmark: the cost of linear-CKA permutation nulls against one CKA, per exact form.

    .venv/bin/python -m bench.bench_nulls [--threads 2] [--repeats 3] [--n_perm 10]

For each case (N, Dx, Dy): one linear_cka; n_perm permutations of the cross term in the N x N
Gram form (<K_c, P^T L_c P>, Gram matrices built once, their cost included) and in feature space
(||Y_c^T P X_c||^2); and the stage's two linear nulls (biased + unbiased) as before (two
feature-space nulls) and now (one shared set, form picked by the cost rule). The candidates
are interleaved within each repeat and medians reported, because the machine is shared (its
load average is printed). Per-permutation costs are extrapolated linearly to 200 permutations
(timed at n_perm and 2 n_perm: fixed cost + per-permutation cost); the Gram null and the
stage's nulls are also timed at 200 permutations, the goal's measure. The last line per case
gives the floors of the two exact forms: what each costs before or besides anything else.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from src.metrics.similarity import _linear_tests, _use_gram_null, linear_cka

CASES = ((2011, 1280, 576), (10_000, 1024, 1024))


def pair(n: int, dx: int, dy: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64)
    w = torch.randn(dx, dy, generator=g, dtype=torch.float64) / dx**0.5
    return x, x @ w + torch.randn(n, dy, generator=g, dtype=torch.float64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n_perm", type=int, default=10)
    p.add_argument("--max_n", type=int, default=10_000, help="skip cases above this N")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average before {os.getloadavg()}")
    f64 = torch.float64
    for n, dx, dy in [c for c in CASES if c[0] <= args.max_n]:
        x, y = pair(n, dx, dy)
        m = args.n_perm

        def cands(m: int, x=x, y=y) -> dict[str, Callable[[], object]]:
            return {
                "gram_null": lambda: _linear_tests(x, y, (False,), m, 0, f64, gram=True),
                "feature_null": lambda: _linear_tests(x, y, (False,), m, 0, f64, gram=False),
                "stage_before": lambda: [
                    _linear_tests(x, y, (u,), m, 0, f64, gram=False) for u in (False, True)
                ],
                "stage_now": lambda: _linear_tests(x, y, (False, True), m, 0, f64),
            }

        # Each null at m and at 2m permutations: the difference is the per-permutation cost,
        # the rest the fixed cost (centring, self terms, Gram matrices).
        times: dict[str, list[float]] = {"one_cka": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            linear_cka(x, y)
            times["one_cka"].append(time.perf_counter() - t0)
            for count in (m, 2 * m):
                for name, fn in cands(count).items():  # interleaved
                    t0 = time.perf_counter()
                    fn()
                    times.setdefault(f"{name}@{count}", []).append(time.perf_counter() - t0)
            # the goal's own measure, timed rather than extrapolated (at N = 2011 the fixed cost
            # dwarfs m permutations, and the difference of two medians is noise)
            for name in ("gram_null", "stage_now"):
                t0 = time.perf_counter()
                cands(200)[name]()
                times.setdefault(f"{name}@200", []).append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        one = med["one_cka"]
        pick = "gram" if _use_gram_null(n, dx, dy, 200) else "feature"
        print(f"N={n} Dx={dx} Dy={dy}: one CKA {one:.3f} s; cost rule picks {pick} for 200")
        total, fixed_of, per_of = {}, {}, {}
        for name in cands(m):
            per = (med[f"{name}@{2 * m}"] - med[f"{name}@{m}"]) / m
            fixed = med[f"{name}@{m}"] - m * per
            total[name], fixed_of[name], per_of[name] = fixed + 200 * per, fixed, per
            print(f"  {name}: fixed {fixed:.2f} s + {per * 1000:.0f} ms/permutation -> 200: "
                  f"{total[name]:.1f} s = {total[name] / one:.1f}x one CKA")  # fmt: skip
        for name in ("gram_null", "stage_now"):
            print(f"  {name}: 200 permutations timed: {med[f'{name}@200']:.2f} s = "
                  f"{med[f'{name}@200'] / one:.1f}x one CKA")  # fmt: skip
        print(f"  stage linear nulls (200), before / now: "
              f"{total['stage_before'] / total['stage_now']:.1f}x")  # fmt: skip
        # What no exact null can go below: the Gram form must build its two N x N Gram
        # matrices (no permutation yet), the feature form must make 200 permuted cross
        # products (nothing else); each measured above, as a multiple of one CKA.
        print(f"  exact-null floors: Gram form's fixed cost alone "
              f"{fixed_of['gram_null'] / one:.1f}x one CKA; feature form's 200 permuted "
              f"products alone {200 * per_of['feature_null'] / one:.1f}x")  # fmt: skip
    print(f"load average after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
