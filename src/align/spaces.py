"""The alignment suite's inputs: pooled vision spaces (E_pre / E_post / references), text spaces
(extract_text, one per layer), data-type labels, and the one held-out split every stage shares.

Flags (add_space_args, shared by the src/eval/align_* stages):
  --vision NAME:KIND:PATH  KIND pre|post (data/vector/<model>) or ref (data/clip_ref/<name>);
                           rows = the mean over an image's tokens
  --text NAME:PATH         extract_text's folder (data/text/<model>); every <pool>_L<layer>
                           sub-folder is one text space; rows = an image's captions, and their
                           mean as the image's text vector
Rows are matched by (shard, image stem). The split is a hash of (shard, stem), so the same images
are held out for every encoder, LLM and stage.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from src.data.images import list_images
from src.data.io import read_manifest
from src.data.paths import shard_dirs
from src.data.sample import data_type_of, read_label_file
from src.data.vectors import iter_chunks, pool_chunk
from src.errors import InputMissing, UserError

Key = tuple[str, str]  # (shard, image stem)
_LAYER_DIR = re.compile(r"^(mean|last)_L(-?\d+)$")
UNLABELLED = "unlabelled"


@dataclass
class Space:
    """One representation of a set of images: x (N, D), row i = image keys[i]."""

    name: str  # encoder (mini.pre, efficientnet-lite0, ...) or text model
    layer: str  # "" for vision, "mean_L-1" etc. for text
    keys: list[Key]
    x: Tensor  # (N, D) float32
    captions: list[Tensor] | None = None  # text only: per image (n_i, D), one row per caption

    @property
    def label(self) -> str:
        return f"{self.name}@{self.layer}" if self.layer else self.name


def add_space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--vision",
        action="append",
        default=[],
        required=True,
        metavar="NAME:KIND:PATH",
        help="a vision space (repeatable); KIND pre|post|ref",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        required=True,
        metavar="NAME:PATH",
        help="extract_text output folder of one text model (repeatable)",
    )
    p.add_argument(
        "--root",
        type=Path,
        required=True,
        help="image root: data types come from the <stem>.json label files",
    )
    p.add_argument("--out_dir", type=Path, required=True, help="e.g. results/align")
    p.add_argument("--test_frac", type=float, default=0.5, help="held-out fraction of images")
    p.add_argument(
        "--min_per_type",
        type=int,
        default=8,
        help="data types with fewer (held-out) images get no row of their own",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")


def vision_specs(args: argparse.Namespace) -> list[tuple[str, str, Path]]:
    out = []
    for spec in args.vision:
        parts = spec.split(":", 2)
        if len(parts) != 3 or parts[1] not in ("pre", "post", "ref") or not parts[0]:
            raise UserError(f"--vision expects NAME:KIND:PATH with KIND pre|post|ref, got {spec!r}")
        out.append((parts[0], parts[1], Path(parts[2])))
    return out


def text_specs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    out = []
    for spec in args.text:
        name, sep, path = spec.partition(":")
        if not sep or not name or not path:
            raise UserError(f"--text expects NAME:PATH, got {spec!r}")
        out.append((name, Path(path)))
    return out


def input_paths(args: argparse.Namespace) -> list[Path]:
    return [p for _, _, p in vision_specs(args)] + [p for _, p in text_specs(args)]


def load_vision(name: str, kind: str, folder: Path) -> Space:
    keys, rows = [], []
    for d in shard_dirs(folder):
        for _, chunk in iter_chunks(d, kind):  # type: ignore[arg-type]
            keys += [(d.name, k) for k in chunk.keys]
            rows.append(pool_chunk(chunk, "mean"))
    if not keys:
        raise InputMissing(f"no {kind} vectors under {folder}")
    return _checked(Space(name, "", keys, torch.cat(rows)))


def text_layers(folder: Path) -> list[str]:
    """The <pool>_L<layer> sub-folders of an extract_text folder, sorted by layer."""
    if not Path(folder).is_dir():
        raise InputMissing(f"no text embeddings at {folder} (run src.extract.extract_text)")
    found = [p.name for p in Path(folder).iterdir() if _LAYER_DIR.match(p.name)]
    if not found:
        raise InputMissing(f"{folder} holds no <pool>_L<layer> folders of extract_text")
    return sorted(found, key=lambda n: (n.split("_L")[0], int(n.split("_L")[1]) % 10_000))


def load_text(name: str, folder: Path) -> list[Space]:
    out = []
    for layer in text_layers(folder):
        keys, caps = [], []
        for d in shard_dirs(Path(folder) / layer):
            for _, chunk in iter_chunks(d, "text"):
                keys += [(d.name, k) for k in chunk.keys]
                caps += [t.float() for t in chunk.items()]
        x = torch.stack([c.mean(0) for c in caps]) if caps else torch.zeros(0, 0)
        out.append(_checked(Space(name, layer, keys, x, caps)))
    return out


def text_info(folder: Path, layer: str) -> dict:
    """The first shard manifest of a text space (model id, revision, layer, pooling)."""
    for d in shard_dirs(Path(folder) / layer):
        m = read_manifest(d)
        if m:
            return {
                k: m.get(k)
                for k in ("text_model", "revision", "pool", "layer", "layer_index", "pool_note")
            }
    return {}


def _checked(s: Space) -> Space:
    if s.x.numel() and not bool(torch.isfinite(s.x).all()):
        raise UserError(f"{s.label}: vectors hold NaN or Inf")
    if len(set(s.keys)) != len(s.keys):
        raise UserError(f"{s.label}: duplicate (shard, key) rows")
    return s


def match(a: Space, b: Space) -> tuple[list[Key], Tensor, Tensor]:
    """Keys both spaces have (a's order) and their row indices in a and in b."""
    where = {k: i for i, k in enumerate(b.keys)}
    keys = [k for k in a.keys if k in where]
    if len(keys) < 4:
        raise UserError(f"{a.label} and {b.label} share {len(keys)} images; need at least 4")
    ia = torch.tensor([i for i, k in enumerate(a.keys) if k in where])
    ib = torch.tensor([where[k] for k in keys])
    return keys, ia, ib


def data_types(root: Path, keys: list[Key]) -> list[str]:
    """Each image's data type from its <stem>.json (scene, photo, chart, table, document)."""
    paths: dict[Key, Path] = {}
    for shard in sorted({s for s, _ in keys}):
        try:
            paths.update({(shard, r.key): r.path for r in list_images(root, shard)})
        except FileNotFoundError:
            continue
    return [
        (data_type_of(read_label_file(paths[k])) if k in paths else None) or UNLABELLED
        for k in keys
    ]


def held_out(keys: list[Key], test_frac: float, seed: int = 0) -> Tensor:
    """(N,) bool, True for held-out images: a hash of (seed, shard, stem), stable everywhere."""
    if not 0 < test_frac < 1:
        raise UserError(f"--test_frac must be in (0, 1), got {test_frac}")

    def u(k: Key) -> float:
        h = hashlib.sha1(f"{seed}/{k[0]}/{k[1]}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    return torch.tensor([u(k) < test_frac for k in keys])


def type_subsets(types: list[str], mask: Tensor, min_n: int) -> Iterator[tuple[str, Tensor]]:
    """("all", rows of mask) and (type, rows) for each type with >= min_n rows in mask."""
    yield "all", mask.nonzero().flatten()
    for t in sorted(set(types)):
        rows = (mask & torch.tensor([v == t for v in types])).nonzero().flatten()
        if rows.numel() >= min_n:
            yield t, rows


def load_all(args: argparse.Namespace) -> tuple[list[Space], list[Space]]:
    vision = [load_vision(n, k, p) for n, k, p in vision_specs(args)]
    text = [s for n, p in text_specs(args) for s in load_text(n, p)]
    return vision, text


def space_identity(args: argparse.Namespace) -> dict:
    """What the suite's tables were computed from: each vision folder's model (from its first
    shard manifest) and each text space's model id, revision, layer and pooling."""
    vision = {}
    for name, kind, path in vision_specs(args):
        m = next((read_manifest(d) for d in shard_dirs(path) if read_manifest(d)), None) or {}
        vision[name] = {
            "kind": kind,
            "path": path,
            **{
                k: m.get(k)
                for k in ("model", "model_id", "revision", "reference", "hook_point", "pool")
                if k in m
            },
        }
    text = {f"{n}@{lay}": text_info(p, lay) for n, p in text_specs(args) for lay in text_layers(p)}
    return {"vision": vision, "text": text}


def write_tables(out_dir: Path, stage: str, tables: dict, args: argparse.Namespace) -> None:
    """Each table as <out_dir>/<name>.csv, then the manifest (last); prints where they went."""
    from src.data.io import atomic_write, write_manifest
    from src.data.paths import align_table

    for name, df in tables.items():
        atomic_write(align_table(out_dir, name), lambda tmp, df=df: df.to_csv(tmp, index=False))
    write_manifest(
        out_dir,
        stage=stage,
        inputs=space_identity(args),
        args=vars(args),
        tables={n: len(df) for n, df in tables.items()},
        split={
            "test_frac": args.test_frac,
            "seed": args.seed,
            "rule": "held out when sha1(seed/shard/stem) < test_frac",
        },
    )
    for name in tables:
        print(f"  [{stage}] {align_table(out_dir, name)}")
