"""Benchmark: exact global kNN vs faiss / scikit-learn, and linear CKA forms, with peak memory.

    .venv/bin/python -m bench.bench_geometry [--n 20000] [--d 1024] [--k 100] [--cka_n 10000]

1. kNN at N x d, k neighbours, metric cos (and l2): src.metrics.neighbors.knn (the default,
   on CPU the symmetric lower-triangle search, and the full row-block search) vs faiss-cpu
   IndexFlatIP / IndexFlatL2
   (skipped if faiss is not installed: `pip install -r requirements-bench.txt`) vs scikit-learn
   NearestNeighbors(algorithm="brute"). Each method runs in its own subprocess on the same seeded
   data (a Gaussian mixture), timed `--repeats` times (best reported), with peak RSS sampled
   every 5 ms during the search: the first search's peak is the memory measure (the peak over
   all repeats is recorded beside it; timed() says why it differs). Neighbour sets are
   compared with ours; rows that differ are checked in float64 to tell rounding near-ties at
   the k-th distance from real errors. Goals: ours <= 0.8x faiss's
   time, peak extra memory <= 1.5x faiss's. `--methods ours faiss --n 100000 --skip_cka` is the
   large run (memory must stay O(block x N)).
2. Linear CKA (float64) at cka_n x d: our feature-space form vs the N x N Gram form (centred Gram
   matrices, one elementwise product sum) vs the dense-H form earlier work used
   (trace(K H L H) with H = I - 11^T/n, three HSICs), the latter timed at smaller N and
   extrapolated with the fitted power law. Goals: >= 8x the Gram form, >= 100x dense-H, |diff| <=
   1e-6.

Results go to results/bench_geometry.json; the ratios are printed. The machine is shared, so
timings carry noise (the load average before and after is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch

from src.metrics.neighbors import knn
from src.metrics.similarity import linear_cka

REPO = Path(__file__).resolve().parents[1]
KNN_METHODS = ("ours", "ours_rowblock", "faiss", "sklearn")


# --------------------------------------------------------------------------------------------
# data and measurement helpers
# --------------------------------------------------------------------------------------------


def mixture(n: int, d: int, seed: int = 0, n_centres: int = 200) -> torch.Tensor:
    """(n, d) float32 Gaussian mixture: n_centres N(0, I) centres, within-cluster noise 0.7."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_centres, d, generator=g)
    labels = torch.randint(n_centres, (n,), generator=g)
    x = torch.randn(n, d, generator=g).mul_(0.7)
    return x.add_(centres[labels])


class PeakRSS:
    """Peak resident memory of this process while the block runs (psutil, sampled every 5 ms)."""

    cpu_times: list[float]  # filled by timed()
    first_peak: int  # filled by timed()

    def __enter__(self) -> PeakRSS:
        self._proc = psutil.Process()
        self.before = self._proc.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.005)

    def peak_so_far(self) -> int:
        """The peak up to now, the current RSS included (between two sampling ticks)."""
        return max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = self.peak_so_far()


def timed(fn: Callable[[], object], repeats: int) -> tuple[object, list[float], PeakRSS]:
    """fn's result, its wall times, and the peak-RSS record over all repeats.

    mem.cpu_times holds each repeat's process CPU time (all threads): on a shared machine the
    wall time mostly measures the other jobs, the CPU time much less so (it still counts OpenMP
    threads spinning while a sibling thread is descheduled). mem.first_peak is the peak during
    the first repeat: one call's memory. Later repeats add what glibc's heap kept of the earlier
    ones' freed temporaries (its mmap threshold rises after the first large free, so mid-sized
    blocks come from the heap, which RSS never gives back: with MALLOC_MMAP_THRESHOLD_ fixed at
    1 MB our l2 search's peak is 146 MB after one and 162 MB after three, else 155 and 230).
    """
    times = []
    with PeakRSS() as mem:
        mem.cpu_times = []
        for r in range(repeats):
            out = None  # the previous repeat's result is not part of this one's memory
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            times.append(time.perf_counter() - t0)
            mem.cpu_times.append(time.process_time() - c0)
            if r == 0:
                mem.first_peak = mem.peak_so_far()
    return out, times, mem


# --------------------------------------------------------------------------------------------
# kNN methods (each runs in a worker subprocess)
# --------------------------------------------------------------------------------------------


def knn_faiss(x: np.ndarray, k: int, metric: str) -> np.ndarray:
    """faiss IndexFlat exact search for k + 1, self dropped. -> (N, k) int64."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cos":
        x = x.copy()
        faiss.normalize_L2(x)
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, idx = index.search(x, k + 1)
    return _drop_self(idx, k)


def knn_sklearn(x: np.ndarray, k: int, metric: str) -> np.ndarray:
    """scikit-learn brute force; kneighbors() without a query excludes each point itself."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(
        n_neighbors=k, algorithm="brute", metric="cosine" if metric == "cos" else "euclidean"
    )
    nn.fit(x)
    return nn.kneighbors(return_distance=False)


def _drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    """(N, k+1) lists that usually contain the row itself -> (N, k) without it."""
    rows = np.arange(idx.shape[0])[:, None]
    is_self = idx == rows
    keep = ~is_self
    # rows where self did not come back (an exact duplicate won its place): drop the last one
    keep[~is_self.any(1), -1] = False
    return idx[keep].reshape(idx.shape[0], k)


def run_worker(args: argparse.Namespace) -> int:
    """Time one kNN method on the seeded data, save its neighbours, print a JSON record."""
    torch.set_num_threads(args.threads)
    x = mixture(args.n, args.d, args.seed)
    if args.worker == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            print(json.dumps({"skipped": "faiss-cpu is not installed"}))
            return 0
    fns: dict[str, Callable[[], np.ndarray]] = {
        "ours": lambda: knn(x, args.k, metric=args.metric, block_size=args.block_size)[1].numpy(),
        "ours_rowblock": lambda: knn(
            x, args.k, metric=args.metric, symmetric=False, block_size=args.block_size
        )[1].numpy(),
        "faiss": lambda: knn_faiss(x.numpy(), args.k, args.metric),
        "sklearn": lambda: knn_sklearn(x.numpy(), args.k, args.metric),
    }
    idx, times, mem = timed(fns[args.worker], args.repeats)
    np.save(args.save, np.asarray(idx, dtype=np.int64))
    record = {
        "times_s": times,
        "best_s": min(times),
        "rss_before_mb": mem.before / 2**20,
        "peak_rss_mb": mem.peak / 2**20,
        # one search in a fresh process (the goal's measure); over all repeats (timed() says why
        # it is larger)
        "peak_extra_mb": (mem.first_peak - mem.before) / 2**20,
        "peak_extra_mb_all_repeats": (mem.peak - mem.before) / 2**20,
        "best_cpu_s": min(mem.cpu_times),
    }
    print(json.dumps(record))
    return 0


def compare_sets(
    x: torch.Tensor, ours: np.ndarray, other: np.ndarray, metric: str, k: int
) -> dict[str, object]:
    """Rows whose neighbour sets differ, and whether each difference is a k-th-distance near-tie.

    For a differing row, the float64 distances of the points in one set but not the other are
    compared with the float64 k-th distance; |gap| tells a rounding near-tie (tiny) from an error.
    Also counts which side agrees with an exact float64 search on those rows.
    """
    sa, sb = np.sort(ours, 1), np.sort(other, 1)
    rows = np.nonzero((sa != sb).any(1))[0]
    out: dict[str, object] = {"rows_differing": int(rows.size), "rows_total": int(ours.shape[0])}
    if rows.size == 0:
        return out
    xd = x.double()
    if metric == "cos":
        xd = xd / xd.norm(dim=1, keepdim=True)
    gaps, ours_exact, other_exact = [], 0, 0
    for r in rows.tolist():
        diff = 1 - xd @ xd[r] if metric == "cos" else ((xd - xd[r]) ** 2).sum(1)
        dist = diff.numpy()
        dist[r] = np.inf
        order = np.lexsort((np.arange(dist.size), dist))
        kth = dist[order[k - 1]]
        truth = set(order[:k].tolist())
        a, b = set(ours[r].tolist()), set(other[r].tolist())
        gaps += [abs(dist[j] - kth) for j in a ^ b]
        ours_exact += a == truth
        other_exact += b == truth
    out.update(
        {
            "max_gap_to_kth_distance_float64": float(max(gaps)),
            "median_gap_to_kth_distance_float64": float(np.median(gaps)),
            "of_those_rows_ours_equals_float64_truth": ours_exact,
            "of_those_rows_other_equals_float64_truth": other_exact,
        }
    )
    return out


def bench_knn(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    results: dict[str, object] = {}
    x = mixture(args.n, args.d, args.seed)
    for metric in args.metrics:
        per: dict[str, object] = {}
        saved: dict[str, np.ndarray] = {}
        for method in args.methods:
            save = tmp / f"{metric}_{method}.npy"
            repeats = 1 if method == "sklearn" else args.repeats
            cmd = [
                sys.executable, "-m", "bench.bench_geometry", "--worker", method,
                "--metric", metric, "--save", str(save), "--n", str(args.n), "--d", str(args.d),
                "--k", str(args.k), "--seed", str(args.seed), "--threads", str(args.threads),
                "--repeats", str(repeats),
            ]  # fmt: skip
            if args.block_size is not None:
                cmd += ["--block_size", str(args.block_size)]
            print(f"kNN {metric}: {method} ...", flush=True)
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                per[method] = {"error": proc.stderr[-2000:]}
                continue
            per[method] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {per[method]}", flush=True)
            if save.exists():
                saved[method] = np.load(save)
        if "ours" in saved:
            for method in ("ours_rowblock", "faiss", "sklearn"):
                if method in saved:
                    per[method]["vs_ours"] = compare_sets(
                        x, saved["ours"], saved[method], metric, args.k
                    )
        faiss = per.get("faiss", {})
        for method in ("ours", "ours_rowblock"):
            mine = per.get(method, {})
            if mine.get("best_s") and faiss.get("best_s"):
                per[f"ratio_{method}_over_faiss"] = mine["best_s"] / faiss["best_s"]
                per[f"memory_ratio_{method}_over_faiss"] = (
                    mine["peak_extra_mb"] / faiss["peak_extra_mb"]
                )
                per[f"memory_ratio_{method}_over_faiss_all_repeats"] = (
                    mine["peak_extra_mb_all_repeats"] / faiss["peak_extra_mb_all_repeats"]
                )
        ours_t, sk_t = per.get("ours", {}).get("best_s"), per.get("sklearn", {}).get("best_s")
        if ours_t and sk_t:
            per["ratio_ours_over_sklearn"] = ours_t / sk_t
        results[metric] = per
    return results


# --------------------------------------------------------------------------------------------
# CKA forms
# --------------------------------------------------------------------------------------------


def cka_gram(x: torch.Tensor, y: torch.Tensor) -> float:
    """Efficient N x N form: centred Gram matrices, one elementwise product sum each."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    k = xc @ xc.T
    l = yc @ yc.T  # noqa: E741
    kf, lf = k.view(-1), l.view(-1)
    return float((kf @ lf) / ((kf @ kf) * (lf @ lf)).sqrt())


def cka_dense_h(x: torch.Tensor, y: torch.Tensor) -> float:
    """The form earlier work used: hsic(K, L) = trace(K H L H) with a dense n x n H."""
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - 1.0 / n
    k, l = x @ x.T, y @ y.T  # noqa: E741

    def hsic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.trace(a @ h @ b @ h)

    return float(hsic(k, l) / (hsic(k, k) * hsic(l, l)).sqrt())


def cka_pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related float64 representations: y = x W + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return x, x @ w + torch.randn(n, d, generator=g, dtype=torch.float64)


def bench_cka(args: argparse.Namespace) -> dict[str, object]:
    x, y = cka_pair(args.cka_n, args.d, args.seed)
    out: dict[str, object] = {"n": args.cka_n, "d": args.d, "dtype": "float64"}
    print(f"CKA at N={args.cka_n}: feature space ...", flush=True)
    ours, t_ours, m_ours = timed(lambda: linear_cka(x, y), args.repeats)
    ours_u, t_ours_u, _ = timed(lambda: linear_cka(x, y, unbiased=True), args.repeats)
    print("  Gram form ...", flush=True)
    gram, t_gram, m_gram = timed(lambda: cka_gram(x, y), args.repeats)
    out["feature_space"] = {
        "value": ours, "best_s": min(t_ours), "times_s": t_ours,
        "peak_extra_mb": (m_ours.peak - m_ours.before) / 2**20,
        "unbiased_value": ours_u, "unbiased_best_s": min(t_ours_u),
    }  # fmt: skip
    out["gram"] = {
        "value": gram, "best_s": min(t_gram), "times_s": t_gram,
        "peak_extra_mb": (m_gram.peak - m_gram.before) / 2**20,
        "abs_diff_vs_ours": abs(gram - ours),
    }  # fmt: skip
    dense: dict[str, object] = {}
    for n in args.dense_h_n:
        print(f"  dense-H form at N={n} ...", flush=True)
        xs, ys = x[:n], y[:n]
        val, t, _ = timed(lambda xs=xs, ys=ys: cka_dense_h(xs, ys), 1)
        dense[str(n)] = {
            "best_s": min(t),
            "value": val,
            "abs_diff_vs_ours": abs(val - linear_cka(xs, ys)),
        }
    ns = np.array(args.dense_h_n, dtype=np.float64)
    ts = np.array([dense[str(n)]["best_s"] for n in args.dense_h_n])
    slope, intercept = np.polyfit(np.log(ns), np.log(ts), 1)
    extrapolated = float(np.exp(intercept) * args.cka_n**slope)
    out["dense_h"] = {
        "timed": dense,
        "fitted_exponent": float(slope),
        "extrapolated_s_at_n": extrapolated,
        "extrapolated_s_at_n_cubic_from_largest": float(ts[-1] * (args.cka_n / ns[-1]) ** 3),
    }
    n, d = args.cka_n, args.d
    # Multiply-adds: the Gram form 2 N^2 D; ours one syrk on CPU, the upper triangle of Z^T Z
    # with Z = [X_c Y_c] (N, 2D): 2 N D^2. The best speed-up equal BLAS efficiency allows is N / D.
    out["flop_ratio_gram_over_ours"] = n / d
    out["speedup_vs_gram"] = min(t_gram) / min(t_ours)
    out["speedup_vs_gram_cpu_time"] = min(m_gram.cpu_times) / min(m_ours.cpu_times)
    out["speedup_vs_dense_h_extrapolated"] = extrapolated / min(t_ours)
    out["max_abs_diff"] = max([abs(gram - ours)] + [v["abs_diff_vs_ours"] for v in dense.values()])
    return out


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--metrics", nargs="+", default=["cos", "l2"], choices=["cos", "l2"])
    p.add_argument("--methods", nargs="+", default=list(KNN_METHODS), choices=KNN_METHODS)
    p.add_argument("--block_size", type=int, help="our searches' block size (default: knn's)")
    p.add_argument("--cka_n", type=int, default=10_000)
    p.add_argument("--dense_h_n", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_knn", action="store_true")
    p.add_argument("--skip_cka", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench_geometry.json")
    # worker mode (one kNN method in a subprocess)
    p.add_argument("--worker", choices=KNN_METHODS, help=argparse.SUPPRESS)
    p.add_argument("--metric", default="cos", help=argparse.SUPPRESS)
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.worker:
        return run_worker(args)
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "loadavg_before": os.getloadavg(),
        },
        "knn_setup": {"n": args.n, "d": args.d, "k": args.k, "data": "Gaussian mixture"},
    }
    try:
        import faiss

        result["machine"]["faiss"] = faiss.__version__
    except ImportError:
        result["machine"]["faiss"] = None
    if not args.skip_knn:
        with tempfile.TemporaryDirectory() as tmp:
            result["knn"] = bench_knn(args, Path(tmp))
    if not args.skip_cka:
        result["cka"] = bench_cka(args)
    result["machine"]["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("\nratios (goal):")
    for metric, per in result.get("knn", {}).items():
        for method in ("ours", "ours_rowblock"):
            if f"ratio_{method}_over_faiss" in per:
                mem = f"memory_ratio_{method}_over_faiss"
                print(f"  kNN {metric}: {method} / faiss time = "
                      f"{per[f'ratio_{method}_over_faiss']:.2f} (<= 0.8), peak extra memory = "
                      f"{per[mem]:.2f} (<= 1.5; over all repeats "
                      f"{per[mem + '_all_repeats']:.2f})")  # fmt: skip
        if "ratio_ours_over_sklearn" in per:
            print(f"  kNN {metric}: ratio_ours_over_sklearn = {per['ratio_ours_over_sklearn']:.2f}")
    if "cka" in result:
        c = result["cka"]
        print(f"  CKA: speedup vs Gram form = {c['speedup_vs_gram']:.1f}x (>= 8), in CPU time "
              f"{c['speedup_vs_gram_cpu_time']:.1f}x")  # fmt: skip
        print(f"  CKA: speedup vs dense-H = {c['speedup_vs_dense_h_extrapolated']:.0f}x (>= 100)")
        print(f"  CKA: max |difference| = {c['max_abs_diff']:.2e} (<= 1e-6)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
