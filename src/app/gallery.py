"""Images a user can pick in the app without any data on disk: the photos that ship inside
scikit-image and scikit-learn (with our captions), a few generated scenes (with their exact
captions), and the images of a local folder when one is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.data.images import ImageRecord, list_images, list_shards, load_image
from src.data.sample import PHOTO_CAPTIONS, make_scene, photo_arrays, render_scene, scene_caption
from src.errors import UserError

# Seeds far from the sample generator's (it numbers scenes from 0), so the app's scenes are new.
SCENE_SEED = 1_000_000


@dataclass(frozen=True)
class Choice:
    """One image of the picker: its key seeds perturbations, as eval_perturb's image key does."""

    label: str
    key: str
    load: Callable[[], tuple[Image.Image, list[str]]]  # -> (RGB image, reference captions)


def _photo(arr: np.ndarray, stem: str) -> tuple[Image.Image, list[str]]:
    im = Image.fromarray(arr)
    if im.mode == "RGBA":  # composite transparency on white, as the sample generator does
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return im.convert("RGB"), (PHOTO_CAPTIONS / f"{stem}.txt").read_text().split("\n")[:1]


def _scene(i: int) -> tuple[Image.Image, list[str]]:
    scene = make_scene(np.random.default_rng(SCENE_SEED + i))
    return render_scene(scene), [scene_caption(scene)]


def _file(record: ImageRecord) -> tuple[Image.Image, list[str]]:
    loaded = load_image(record)
    if loaded.image is None:
        raise UserError(f"{record.path}: {loaded.error}")
    return loaded.image, loaded.captions


def build_gallery(images: Path | None = None, n_scenes: int = 6, per_shard: int = 4) -> dict:
    """label -> Choice: generated scenes, the packaged photos, then up to `per_shard` images of
    each shard of `images` (a folder in the image layout; None: none)."""
    out: dict[str, Choice] = {}
    for i in range(n_scenes):
        out[f"scene {i + 1} (generated)"] = Choice(f"scene {i + 1}", f"app_scene_{i}",
                                                   lambda i=i: _scene(i))  # fmt: skip
    photos = photo_arrays()
    for stem, (source, arr) in sorted(photos.items()):
        out[f"{stem} ({source})"] = Choice(stem, stem, lambda a=arr, s=stem: _photo(a, s))
    if images is not None and Path(images).is_dir():
        for shard in list_shards(images):
            for rec in list_images(images, shard)[:per_shard]:
                out[f"{shard}/{rec.key}"] = Choice(f"{shard}/{rec.key}", rec.key,
                                                   lambda r=rec: _file(r))  # fmt: skip
    return out


def read_upload(path: str | Path) -> tuple[Image.Image, list[str], str]:
    """An uploaded file -> (RGB image, captions of a .txt beside it (none), key), or a UserError
    naming the file and why it cannot be used (decoded exactly as the stages decode images)."""
    path = Path(path)
    record = ImageRecord(shard="upload", key=path.stem, path=path, caption_path=None)
    loaded = load_image(record)
    if loaded.image is None:
        raise UserError(f"{path.name} cannot be used: {loaded.error}")
    return loaded.image, [], path.stem
