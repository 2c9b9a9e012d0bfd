"""Stage: geometry of E_pre vs E_post (and reference spaces): kNN overlap, rank displacement,
distance correlation, spectra and CKA, each with its uncertainty, as tidy tables."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.data.identity import vector_identity
from src.data.io import atomic_write, write_json_atomic, write_manifest
from src.data.paths import knn_table_path, shard_dirs
from src.data.vectors import check_aligned, iter_chunks, pool_chunk
from src.errors import UserError
from src.metrics.measures import MEASURES, get_measure, null_measures, permutation_tests
from src.metrics.neighbors import (
    distance_correlation,
    knn,
    knn_overlap,
    knn_overlap_chance,
    knn_overlap_ci,
    neighbor_ranks,
    neighborhood_mean_ci,
    rank_displacement,
    rank_displacement_chance,
)
from src.metrics.spectra import dataset_spectra, token_spectra
from src.metrics.stats import summarize
from src.runtime import csv_list, resolve_device
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.extract_knn",
        description="kNN overlap (KNOR) pre->post and against references, rank displacement, "
        "pairwise-distance correlation, effective rank / energy spectra and CKA, with bootstrap "
        "CIs, chance levels and permutation nulls.",
    )
    p.add_argument(
        "--pre_pt",
        type=Path,
        required=True,
        help="folder of E_pre chunks: data/vector/<model> (all shards) or one shard",
    )
    p.add_argument("--post_pt", type=Path, required=True, help="folder of E_post chunks")
    p.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="NAME:PATH",
        help="reference embeddings from extract_clip (repeatable), e.g. clip:data/clip_ref/clip",
    )
    p.add_argument("--out_dir", type=Path, required=True)
    p.add_argument("--shards", type=csv_list, help="only these shards")
    p.add_argument(
        "--pool",
        choices=["mean", "cls", "none"],
        default="mean",
        help="per-image vector: token mean, first token, or all tokens flattened "
        "(equal token counts only)",
    )
    p.add_argument("--metric", choices=["cos", "l2"], default="cos")
    p.add_argument("--k", type=int, nargs="+", default=[10, 50, 100])
    p.add_argument(
        "--scope",
        choices=["global", "shard"],
        default="global",
        help="neighbours among all images (default) or within each shard, as "
        "earlier per-shard numbers were computed",
    )
    p.add_argument(
        "--svd_per_image_csv", action="store_true", help="also write the per-image spectra table"
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    p.add_argument(
        "--cka",
        type=csv_list,
        default=["cka_linear", "cka_linear_unbiased", "cka_rbf"],
        help="CKA measures of src.metrics.measures with a permutation null (comma-separated): "
        + ", ".join(n for n, m in MEASURES.items() if m.null is not None),
    )
    p.add_argument("--permutations", type=int, default=200, help="permutations for CKA nulls")
    p.add_argument("--pairs", type=int, default=100_000, help="pairs for distance correlation")
    p.add_argument(
        "--rbf_max_n",
        type=int,
        default=3000,
        help="RBF CKA needs N x N Gram matrices: subsample above this many images",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--block_size", type=int, help="rows per kNN block (default: 1024, fewer above 32k images)"
    )
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    return p


@dataclass
class Space:
    name: str  # pre, post, or ref:<name>
    keys: list[str]
    shards: list[str]  # shard of each row
    x: torch.Tensor  # (N, D) pooled, float32


def _pool(chunk, pool: str) -> torch.Tensor:
    if pool != "none":
        return pool_chunk(chunk, pool)
    if chunk.lengths.numel() and (chunk.lengths != chunk.lengths[0]).any():
        raise UserError("--pool none needs the same token count for every image")
    return chunk.vectors.float().reshape(len(chunk.keys), -1)


def load_pair(pre_dir: Path, post_dir: Path, shards, pool: str) -> tuple[Space, Space]:
    """Pooled E_pre and E_post of every shard, rows aligned by key (checked chunk by chunk)."""
    rows: dict[str, list] = {"keys": [], "shards": [], "pre": [], "post": []}
    pre_dirs = shard_dirs(pre_dir, shards)
    post_dirs = {d.name: d for d in shard_dirs(post_dir, shards)}
    for d in pre_dirs:
        if d.name not in post_dirs:
            raise UserError(f"shard {d.name} has E_pre in {pre_dir} but no E_post in {post_dir}")
        pre_chunks = dict(iter_chunks(d, "pre"))
        post_chunks = dict(iter_chunks(post_dirs[d.name], "post"))
        if sorted(pre_chunks) != sorted(post_chunks):
            raise UserError(f"{d}: pre chunks {sorted(pre_chunks)} vs post {sorted(post_chunks)}")
        for i in sorted(pre_chunks):
            check_aligned(pre_chunks[i], post_chunks[i], f"{d} chunk {i}")
            rows["keys"] += pre_chunks[i].keys
            rows["shards"] += [d.name] * len(pre_chunks[i].keys)
            rows["pre"].append(_pool(pre_chunks[i], pool))
            rows["post"].append(_pool(post_chunks[i], pool))
    if not rows["keys"]:
        raise UserError(f"no images in {pre_dir}")
    for kind in ("pre", "post"):
        x = torch.cat(rows[kind])
        bad = (~torch.isfinite(x).all(1)).nonzero().flatten().tolist()
        if bad:
            names = [f"{rows['shards'][i]}/{rows['keys'][i]}" for i in bad[:5]]
            raise UserError(f"E_{kind} of {len(bad)} image(s) holds NaN or Inf: {names}")
    if len(set(zip(rows["shards"], rows["keys"], strict=True))) != len(rows["keys"]):
        raise UserError("duplicate (shard, key) rows in the vectors")
    return (
        Space("pre", rows["keys"], rows["shards"], torch.cat(rows["pre"])),
        Space("post", rows["keys"], rows["shards"], torch.cat(rows["post"])),
    )


def load_ref(name: str, folder: Path, like: Space, shards) -> tuple[Space, int]:
    """A reference space reordered to `like`'s rows; returns it and how many rows it lacks."""
    found: dict[tuple[str, str], torch.Tensor] = {}
    for d in shard_dirs(folder, shards):
        for _, chunk in iter_chunks(d, "ref"):
            for k, v in zip(chunk.keys, pool_chunk(chunk, "mean"), strict=True):
                found[(d.name, k)] = v
    rows = [(s, k) for s, k in zip(like.shards, like.keys, strict=True)]
    have = [r in found for r in rows]
    if not any(have):
        raise UserError(f"reference {name!r} at {folder} shares no image with the vectors")
    x = torch.stack([found[r] for r, h in zip(rows, have, strict=True) if h])
    keep = torch.tensor(have)
    return Space(
        f"ref:{name}",
        [k for k, h in zip(like.keys, have, strict=True) if h],
        [s for s, h in zip(like.shards, have, strict=True) if h],
        x,
    ), int((~keep).sum())


def subset(space: Space, mask: torch.Tensor) -> Space:
    idx = mask.nonzero().flatten().tolist()
    return Space(
        space.name, [space.keys[i] for i in idx], [space.shards[i] for i in idx], space.x[mask]
    )


def scopes(a: Space, args) -> Iterator[tuple[str, torch.Tensor]]:
    """(scope name, row mask): everything, or each shard on its own."""
    if args.scope == "global":
        yield "global", torch.ones(len(a.keys), dtype=torch.bool)
        return
    for s in sorted(set(a.shards)):
        yield s, torch.tensor([sh == s for sh in a.shards])


def knn_rows(a: Space, b: Space, scope: str, args, device, cache: dict) -> list[dict]:
    """kNN overlap and rank displacement of a -> b at every k (one search per space)."""
    n = a.x.shape[0]
    ks = [k for k in sorted(args.k) if k < n]
    if not ks:
        return []
    kmax = ks[-1]

    def neighbours(s: Space) -> torch.Tensor:
        key = (s.name, scope, n)
        if key not in cache:
            _, idx = knn(s.x.to(device), kmax, metric=args.metric, block_size=args.block_size)
            cache[key] = idx.cpu()
        return cache[key]

    na, nb = neighbours(a), neighbours(b)
    ranks = neighbor_ranks(b.x.to(device), na.to(device), metric=args.metric).cpu()
    out = []
    for k in ks:
        a_k, b_k = na[:, :k], nb[:, :k]
        ov = knn_overlap(a_k, b_k)
        disp = rank_displacement(ranks[:, :k])
        # CIs from the kNN graph (images sharing neighbours are dependent), not an image bootstrap
        s = dict(summarize(ov, n_boot=0), ci=knn_overlap_ci(a_k, b_k))
        d = dict(summarize(disp, n_boot=0), ci=neighborhood_mean_ci(disp, a_k, b_k))
        out.append({
            "from_space": a.name, "to_space": b.name, "scope": scope, "metric": args.metric,
            "pool": args.pool, "k": k, "n": n,
            "overlap_mean": s["mean"], "overlap_median": s["median"], "overlap_std": s["std"],
            "overlap_ci_low": s["ci"][0], "overlap_ci_high": s["ci"][1],
            "chance": knn_overlap_chance(n, k),
            "rank_displacement_mean": d["mean"], "rank_displacement_ci_low": d["ci"][0],
            "rank_displacement_ci_high": d["ci"][1],
            "rank_displacement_chance": rank_displacement_chance(n, k),
        })  # fmt: skip
    return out


def similarity_rows(a: Space, b: Space, args, device) -> tuple[list[dict], dict]:
    """CKA (every --cka measure) with permutation p-values, and distance correlation."""
    x, y = a.x.to(device), b.x.to(device)
    rows = []
    # measures of one null family (both linear estimators) share one set of permuted cross terms
    tests = permutation_tests(
        args.cka, x, y, n_perm=args.permutations, seed=args.seed, max_n=args.rbf_max_n
    )
    for name, t in tests.items():
        null = t.null.double()
        subsampled = get_measure(name).subsample and x.shape[0] > args.rbf_max_n
        rows.append({
            "from_space": a.name, "to_space": b.name, "estimator": name, "pool": args.pool,
            "n": int(args.rbf_max_n if subsampled else x.shape[0]),
            "cka": t.observed, "null_mean": float(null.mean()),
            "null_q95": float(torch.quantile(null, 0.95)), "p_value": t.p_value,
            "permutations": int(null.numel()),
        })  # fmt: skip
    dc = distance_correlation(x, y, metric=args.metric, n_pairs=args.pairs, seed=args.seed)
    dc = {"from_space": a.name, "to_space": b.name, "metric": args.metric, "pool": args.pool, **dc}
    return rows, dc


def spectra_rows(
    pre_dir: Path, post_dir: Path, spaces: dict[str, Space], args
) -> tuple[list[dict], pd.DataFrame]:
    """Per-image token spectra (streamed per chunk) and the pooled dataset matrix's spectra."""
    per_image = []
    for kind, folder in (("pre", pre_dir), ("post", post_dir)):
        for d in tqdm(
            shard_dirs(folder, args.shards), desc=f"spectra {kind}", disable=args.no_progress
        ):
            for _, chunk in iter_chunks(d, kind):
                items = chunk.items()
                ok = [i for i, t in enumerate(items) if t.shape[0] >= 2]
                if not ok:
                    continue
                for std in (False, True):
                    res = token_spectra([items[i] for i in ok], standardize=std)
                    frame = pd.DataFrame({k: v.numpy() for k, v in res.items()})
                    frame.insert(0, "key", [chunk.keys[i] for i in ok])
                    frame.insert(0, "shard", d.name)
                    frame.insert(0, "variant", "standardised" if std else "raw")
                    frame.insert(0, "space", kind)
                    per_image.append(frame)
    per_image_df = pd.concat(per_image, ignore_index=True) if per_image else pd.DataFrame()
    rows = []
    measures = [c for c in per_image_df.columns if c not in ("space", "variant", "shard", "key")]
    groups = per_image_df.groupby(["space", "variant"]) if len(per_image_df) else []
    for (space, variant), g in groups:
        for m in measures:
            vals = torch.tensor(g[m].to_numpy(), dtype=torch.float64)
            vals = vals[torch.isfinite(vals)]
            if vals.numel() == 0:
                continue
            s = summarize(vals, n_boot=args.bootstrap, seed=args.seed)
            rows.append({"space": space, "level": "image", "variant": variant, "measure": m,
                         "value": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                         "n": s["n"]})  # fmt: skip
    for name, sp in spaces.items():
        for std in (False, True):
            for m, v in dataset_spectra(sp.x, standardize=std).items():
                rows.append({"space": name, "level": "dataset",
                             "variant": "standardised" if std else "raw", "measure": m,
                             "value": v, "ci_low": None, "ci_high": None,
                             "n": sp.x.shape[0]})  # fmt: skip
    return rows, per_image_df


def load_spaces(args: argparse.Namespace) -> tuple[Space, Space, dict[str, Space], dict]:
    """Pooled E_pre, E_post and every --ref space; how many images each reference lacks."""
    if not null_measures(args.cka):  # checked before any loading
        raise UserError("--cka names no measure")
    pre, post = load_pair(args.pre_pt, args.post_pt, args.shards, args.pool)
    refs, missing = {}, {}
    for spec in args.ref:
        name, sep, path = spec.partition(":")
        if not sep or not name or not path:
            raise UserError(f"--ref expects NAME:PATH, got {spec!r}")
        refs[name], missing[name] = load_ref(name, Path(path), pre, args.shards)
    if min(args.k) < 1:
        raise UserError("--k values must be >= 1")
    if pre.x.shape[0] <= min(args.k):
        raise UserError(f"N={pre.x.shape[0]} images but --k {min(args.k)}: need N > k")
    return pre, post, refs, missing


def space_pairs(pre: Space, post: Space, refs: dict[str, Space]) -> list[tuple[Space, Space]]:
    """pre -> post, and each reference -> pre / post on the images the reference has."""
    pairs: list[tuple[Space, Space]] = [(pre, post)]
    for ref in refs.values():
        have = set(zip(ref.shards, ref.keys, strict=True))
        keep = torch.tensor([r in have for r in zip(pre.shards, pre.keys, strict=True)])
        pairs += [(ref, subset(pre, keep)), (ref, subset(post, keep))]
    return pairs


def geometry_tables(pairs: list[tuple[Space, Space]], args, device) -> dict[str, pd.DataFrame]:
    """The kNN, CKA and distance-correlation tables over every pair of spaces."""
    knn_table, cka_table, dc_table = [], [], []
    cache: dict = {}
    for a, b in tqdm(pairs, desc="pairs", disable=args.no_progress):
        for scope, mask in scopes(a, args):
            sa, sb = (a, b) if scope == "global" else (subset(a, mask), subset(b, mask))
            knn_table += knn_rows(sa, sb, scope, args, device, cache)
        rows, dc = similarity_rows(a, b, args, device)
        cka_table += rows
        dc_table.append(dc)
    return {"knn": pd.DataFrame(knn_table), "cka": pd.DataFrame(cka_table),
            "distance_corr": pd.DataFrame(dc_table)}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    upstream = vector_identity(args.post_pt, args.shards)
    pre, post, refs, missing = load_spaces(args)
    tables = geometry_tables(space_pairs(pre, post, refs), args, device)
    spaces = {"pre": pre, "post": post, **{f"ref:{n}": r for n, r in refs.items()}}
    spec_rows, per_image = spectra_rows(args.pre_pt, args.post_pt, spaces, args)
    tables["spectra"] = pd.DataFrame(spec_rows)
    if args.svd_per_image_csv:
        tables["spectra_per_image"] = per_image
    out = args.out_dir
    for name, df in tables.items():
        atomic_write(knn_table_path(out, name), lambda tmp, df=df: df.to_csv(tmp, index=False))
    summary = {
        "n_images": pre.x.shape[0], "shards": sorted(set(pre.shards)),
        "references": {n: {"n": r.x.shape[0], "missing": missing[n]} for n, r in refs.items()},
        **{t: tables[t].to_dict("records") for t in ("knn", "cka", "distance_corr")},
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    write_json_atomic(out / "summary.json", summary)
    names = [knn_table_path(out, t).name for t in tables]
    write_manifest(out, stage="extract_knn", upstream=upstream, pre=args.pre_pt,
                   post=args.post_pt, refs=args.ref, args=vars(args), n_images=pre.x.shape[0],
                   tables=names, device=str(device))  # fmt: skip
    print_headline(tables["knn"], out, tables["cka"])
    return 0


STAGE = Stage(
    name="extract_knn",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.pre_pt, a.post_pt, *(Path(r.partition(":")[2]) for r in a.ref)],
    outputs=lambda a: [a.out_dir],
    on_skip=lambda a: print_headline(pd.read_csv(knn_table_path(a.out_dir, "knn")), a.out_dir),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


def print_headline(knn_df: pd.DataFrame, out: Path, cka_df: pd.DataFrame | None = None) -> None:
    if cka_df is None and knn_table_path(out, "cka").exists():
        cka_df = pd.read_csv(knn_table_path(out, "cka"))
    print(f"geometry ({out}): kNN overlap mean [95% CI] vs chance")
    for r in knn_df[knn_df["scope"] == "global"].itertuples():
        print(
            f"  {r.from_space} -> {r.to_space} k={r.k}: "
            f"{r.overlap_mean:.3f} [{r.overlap_ci_low:.3f}, {r.overlap_ci_high:.3f}] "
            f"(chance {r.chance:.3f}, N={r.n})"
        )
    if cka_df is not None:
        for r in cka_df.itertuples():
            print(
                f"  CKA {r.from_space} -> {r.to_space} {r.estimator}: {r.cka:.3f} "
                f"(null 95% {r.null_q95:.3f}, p={r.p_value:.3g})"
            )


if __name__ == "__main__":
    sys.exit(main())
