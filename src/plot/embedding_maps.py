"""Stage: embedding maps of several spaces of the same images (seed A's `embedding`).

Each --space NAME=PATH is a folder of pooled vectors (extract_clip's references, E_pre / E_post
of extract_vectors as PATH:pre / PATH:post, caption embeddings); the images every space has are
sampled, --n_samples per data type (seeded), and labelled from the image root (data type; for
scenes, the first object's shape and colour and the object count).

- 2-D maps per space: t-SNE (scikit-learn; perplexity kept below N, so N <= 5 works) and UMAP
  (umap-learn), the coordinates in coords.csv with every label.
- Procrustes after ONE shared map, per pair of spaces (A, B) in --space order: A is mapped onto B
  by least squares (ridge) fitted on a training split, and on the held-out images the Procrustes
  disparity between the mapped A and B is measured (both standardised: in [0, 1]) beside the
  same for mismatched pairs (B's rows deranged: chance). procrustes.csv.
- Representational similarity: each space's dissimilarity matrix (1 - cosine), and per pair the
  Spearman rho of their entries with a bootstrap CI over images and a permutation p-value.
  rsa.csv, rdm.csv (upper triangles, items ordered by data type).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.data.io import atomic_write, write_manifest
from src.data.paths import align_table, embedding_maps_dir, shard_dirs
from src.data.sample import data_type_of, read_label_file
from src.data.vectors import iter_chunks, pool_chunk
from src.errors import UserError
from src.metrics.maps import procrustes_disparity, rdm, ridge_map, rsa_test, upper
from src.metrics.stats import derangement
from src.stage import Stage

KINDS = ("ref", "pre", "post", "text")
LABELS = ("data_type", "scene_shape", "scene_colour", "scene_count")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.embedding_maps",
        description="t-SNE / UMAP maps of several embedding spaces of the same images, "
        "Procrustes after one shared map, and RSA with bootstrap CIs.",
    )
    p.add_argument("--space", action="append", required=True, metavar="NAME=PATH[:KIND]",
                   help="a vector folder (repeatable); KIND pre/post/ref/text picks the chunks "
                   "when the folder holds several")  # fmt: skip
    p.add_argument("--root", type=Path, required=True, help="image root (labels beside images)")
    p.add_argument("--out_dir", type=Path, default=embedding_maps_dir(Path("results")))
    p.add_argument("--n_samples", "--n-samples", type=int, default=30,
                   help="images per data type (seeded sample)")  # fmt: skip
    p.add_argument("--method", nargs="+", choices=["tsne", "umap"], default=["tsne", "umap"])
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE; kept below N")
    p.add_argument("--n_neighbors", type=int, default=15, help="UMAP; kept below N")
    p.add_argument("--train_frac", type=float, default=0.5, help="split for the shared map")
    p.add_argument("--ridge", type=float, default=1e-2, help="ridge of the shared map")
    p.add_argument("--bootstrap", type=int, default=500)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_existing", action="store_true")
    return p


@dataclass
class Items:
    """The sampled images: shard, key and labels, in the row order of every space."""

    table: pd.DataFrame  # item, shard, key, data_type, scene_shape, scene_colour, scene_count
    spaces: dict[str, torch.Tensor]  # name -> (N, D) float32


def parse_space(spec: str) -> tuple[str, Path, str | None]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--space expects NAME=PATH[:KIND], got {spec!r}")
    head, colon, kind = path.rpartition(":")
    if colon and kind in KINDS:
        return name, Path(head), kind
    return name, Path(path), None


def load_space(folder: Path, kind: str | None) -> dict[tuple[str, str], torch.Tensor]:
    """(shard, key) -> the mean-pooled vector of one folder's chunks of one kind."""
    out: dict[tuple[str, str], torch.Tensor] = {}
    for d in shard_dirs(folder):
        kinds = [k for k in KINDS if any(d.glob(f"{k}_vectors_*.pt"))]
        use = kind or (kinds[0] if len(kinds) == 1 else None)
        if use is None or use not in kinds:
            raise UserError(f"{d} holds {kinds} chunks: name one as {folder}:KIND")
        for _, chunk in iter_chunks(d, use):  # type: ignore[arg-type]
            out.update({(d.name, k): v for k, v in zip(chunk.keys, pool_chunk(chunk, "mean"),
                                                           strict=True)})  # fmt: skip
    return out


def labels_of(root: Path, shard: str, key: str) -> dict[str, object]:
    lab = read_label_file(root / shard / f"{key}.jpg") or {}
    kind = data_type_of(lab) or "unlabelled"
    first = (lab.get("objects") or [{}])[0] if kind == "scene" else {}
    return {"data_type": kind, "scene_shape": first.get("shape", "n/a"),
            "scene_colour": first.get("colour", "n/a"),
            "scene_count": lab.get("count", "n/a") if kind == "scene" else "n/a"}  # fmt: skip


def sample_items(args: argparse.Namespace) -> Items:
    loaded = {name: load_space(path, kind) for name, path, kind in map(parse_space, args.space)}
    common = sorted(set.intersection(*(set(v) for v in loaded.values())))
    if len(common) < 2:
        raise UserError(f"the spaces share {len(common)} image(s); need at least 2")
    rows = pd.DataFrame([{"shard": s, "key": k, **labels_of(args.root, s, k)} for s, k in common])
    rng = np.random.default_rng(args.seed)
    picked = [g.iloc[np.sort(rng.permutation(len(g))[: args.n_samples])]
              for _, g in rows.groupby("data_type", sort=True)]  # fmt: skip
    table = pd.concat(picked, ignore_index=True)
    table.insert(0, "item", range(len(table)))
    idx = list(zip(table.shard, table.key, strict=True))
    return Items(table, {n: torch.stack([v[i] for i in idx]).float() for n, v in loaded.items()})


def reduce_2d(x: np.ndarray, method: str, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """(N, 2) coordinates and the settings used (perplexity / n_neighbors kept below N)."""
    n = len(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(args.perplexity, max(0.5, (n - 1) / 3))  # sklearn needs < N
        tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=args.seed)
        return tsne.fit_transform(x), {"perplexity": perplexity}
    if n < 3:
        raise UserError(f"UMAP needs at least 3 images, got {n}; use --method tsne")
    import umap

    k = max(2, min(args.n_neighbors, n - 1))
    init = "spectral" if n > k + 1 else "random"  # spectral init needs more points than k
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by the seed; small-N notices
        fit = umap.UMAP(n_neighbors=k, random_state=args.seed, init=init).fit_transform(x)
    return fit, {"n_neighbors": k}


def coords_table(items: Items, args: argparse.Namespace) -> pd.DataFrame:
    parts = []
    for name, x in items.spaces.items():
        for method in args.method:
            xy, used = reduce_2d(x.numpy().astype(np.float64), method, args)
            parts.append(items.table.assign(space=name, method=method, x=xy[:, 0], y=xy[:, 1],
                                            **{k: v for k, v in used.items()}))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def procrustes_rows(items: Items, args: argparse.Namespace) -> list[dict]:
    n = len(items.table)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    n_tr = round(args.train_frac * n)
    tr, te = order[:n_tr], order[n_tr:]
    if len(tr) < 2 or len(te) < 3:
        raise UserError(f"{n} images split {len(tr)}/{len(te)}: need >= 2 to fit, >= 3 to test")
    rows = []
    for a, b in combinations(items.spaces, 2):
        xa, xb = items.spaces[a], items.spaces[b]
        mapped = ridge_map(xa[tr], xb[tr], args.ridge)(xa[te])
        null = [procrustes_disparity(mapped, xb[te][derangement(len(te), seed=s)])
                for s in range(20)]  # fmt: skip
        rows.append({"space_a": a, "space_b": b, "map": f"ridge least squares {a} -> {b}",
                     "n_train": len(tr), "n_test": len(te),
                     "disparity": procrustes_disparity(mapped, xb[te]),
                     "disparity_mismatched": float(np.mean(null)),
                     "disparity_mismatched_sd": float(np.std(null))})  # fmt: skip
    return rows


def rsa_tables(items: Items, args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = items.table.sort_values(["data_type", "item"]).item.to_numpy()
    i, j = np.triu_indices(len(order), 1)
    rdms = []
    for name, x in items.spaces.items():
        d = upper(rdm(x[torch.from_numpy(order.copy())])).numpy()
        rdms.append(pd.DataFrame({"space": name, "i": i, "j": j, "item_i": order[i],
                                  "item_j": order[j], "dissimilarity": d}))  # fmt: skip
    rows = [{"space_a": a, "space_b": b, "metric": "1 - cosine",
             **rsa_test(items.spaces[a], items.spaces[b], n_boot=args.bootstrap,
                        n_perm=args.permutations, seed=args.seed)}
            for a, b in combinations(items.spaces, 2)]  # fmt: skip
    return pd.DataFrame(rows), pd.concat(rdms, ignore_index=True)


def save(out_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    for name, df in tables.items():
        atomic_write(align_table(out_dir, name), lambda tmp, df=df: df.to_csv(tmp, index=False))


def run(args: argparse.Namespace) -> int:
    if args.n_samples < 1:
        raise UserError("--n_samples must be >= 1")
    items = sample_items(args)
    if len(items.spaces) < 2:
        raise UserError("give at least two --space folders to compare")
    coords = coords_table(items, args)
    rsa, rdms = rsa_tables(items, args)
    procrustes = pd.DataFrame(procrustes_rows(items, args))
    save(args.out_dir, {"coords": coords, "procrustes": procrustes, "rsa": rsa, "rdm": rdms})
    write_manifest(args.out_dir, stage="embedding_maps", args=vars(args),
                   n_images=len(items.table),
                   per_type=items.table.data_type.value_counts().to_dict(),
                   dims={n: int(x.shape[1]) for n, x in items.spaces.items()})  # fmt: skip
    show = ["space_a", "space_b", "rho", "ci_low", "ci_high", "p_perm"]
    print(rsa[show].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    show = ["space_a", "space_b", "disparity", "disparity_mismatched"]
    print(procrustes[show].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"[embedding_maps] {len(items.table)} images -> {args.out_dir}")
    return 0


STAGE = Stage(
    name="embedding_maps",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root, *(parse_space(s)[1] for s in a.space)],
    outputs=lambda a: [a.out_dir],
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
