"""Stage: patch-text similarity maps in a real joint image-text space (seed A's `attention`).

For each image and text: the cosine of every patch's embedding in the dual encoder's joint space
to the text's embedding (src/models/joint_space.py says how patches get there for CLIP and for
SigLIP), overlaid on the original image exactly where the processor's resize and centre crop
took the model's input from. Writes <out_dir>/similarity.csv (image, text, row, col, the patch's
box in original pixels, similarity), <out_dir>/<image>_<t>.png overlays and manifest.json.

Without --model_id the offline dual encoder is used; until train_align (issue 14) installs one,
the stage stops with one line saying that no joint image-text space is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from src.data.images import ImageRecord, load_image
from src.data.io import atomic_write, write_manifest
from src.data.paths import align_table, attention_maps_dir
from src.errors import UserError
from src.models.joint_space import load_joint_space, patch_text_similarity
from src.runtime import add_runtime_args, resolve_device, resolve_dtype
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.attention_maps",
        description="Patch-text cosine maps in a dual encoder's joint space, overlaid where "
        "the processor cropped.",
    )
    p.add_argument("--image", type=Path, nargs="+", required=True, help="image files")
    p.add_argument("--text", nargs="+", default=["What is shown?"], help="texts to compare")
    p.add_argument("--model_id", help="CLIP / SigLIP hub id or path (default: the offline one)")
    p.add_argument("--revision")
    p.add_argument("--out_dir", type=Path, default=attention_maps_dir(Path("results")))
    add_runtime_args(p)
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--skip_existing", action="store_true")
    return p


def similarity_rows(space, images: dict[str, Image.Image], texts: list[str]) -> pd.DataFrame:
    """A row per image, text and patch: its box in original pixels and its similarity."""
    rows = []
    for name, im in images.items():
        sim = patch_text_similarity(space, space.preprocess([im]), texts)[0]  # (N, R, C)
        box = space.view_box(*im.size)
        n_rows, n_cols = sim.shape[1:]
        ph, pw = (box.bottom - box.top) / n_rows, (box.right - box.left) / n_cols
        for t, text in enumerate(texts):
            for r in range(n_rows):
                for c in range(n_cols):
                    rows.append({"image": name, "text_index": t, "text": text, "row": r,
                                 "col": c, "left": box.left + c * pw, "top": box.top + r * ph,
                                 "right": box.left + (c + 1) * pw,
                                 "bottom": box.top + (r + 1) * ph,
                                 "similarity": float(sim[t, r, c])})  # fmt: skip
    return pd.DataFrame(rows)


def _decode(path: Path) -> Image.Image:
    """RGB, upright (EXIF orientation), through the loader every stage uses; bad files named."""
    loaded = load_image(ImageRecord(path.parent.name, path.stem, path, None))
    if loaded.image is None:
        raise UserError(f"--image {path}: {loaded.error}")
    return loaded.image


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    space = load_joint_space(args.model_id, device, resolve_dtype(args.dtype, device),
                             revision=args.revision,
                             trust_remote_code=args.trust_remote_code)  # fmt: skip
    missing = [str(p) for p in args.image if not p.is_file()]
    if missing:
        raise UserError(f"--image: no such file(s): {missing}")
    images = {p.stem: _decode(p) for p in args.image}
    if len(images) != len(args.image):
        raise UserError("--image: two files share a name (stem); rename one")
    table = similarity_rows(space, images, list(args.text))
    atomic_write(align_table(args.out_dir, "similarity"),
                 lambda tmp: table.to_csv(tmp, index=False))  # fmt: skip
    from src.reporting.align_maps_figures import save_overlays

    pngs = save_overlays(table, images, args.out_dir)
    write_manifest(args.out_dir, stage="attention_maps", args=vars(args), model=space.name,
                   method=space.method, n_images=len(images), texts=list(args.text))  # fmt: skip
    print(f"[attention_maps] {space.name}: {len(pngs)} overlays -> {args.out_dir}")
    return 0


STAGE = Stage(
    name="attention_maps",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: list(a.image),
    outputs=lambda a: [a.out_dir],
)


def main(argv: list[str] | None = None) -> int:
    with torch.inference_mode():
        return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
