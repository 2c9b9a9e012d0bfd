"""Image shards in: discovery, robust decoding with per-file reasons, and a streaming loader."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from src.errors import InputMissing, UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
# PIL's own name for the format each extension promises; a mismatch is reported, not fatal.
_EXT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}

DEFAULT_MIN_SIDE = 8
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; larger files are skipped rather than decoded

_EXIF_ORIENTATION = 0x0112
# What ImageOps.exif_transpose does for each EXIF Orientation value (1 = upright, nothing to do).
_ORIENTATIONS = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "flipped over the main diagonal",
    6: "rotated 90 degrees clockwise",
    7: "flipped over the anti-diagonal",
    8: "rotated 90 degrees counter-clockwise",
}

# Never let PIL fill truncated files with grey: a truncated file is an error we report.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class ImageRecord:
    """One image file of a shard; `key` is the file stem, unique within the shard."""

    shard: str
    key: str
    path: Path
    caption_path: Path | None


@dataclass
class LoadedImage:
    """What decoding one file gave: an RGB image, or None with the reason it was skipped."""

    record: ImageRecord
    image: Image.Image | None
    captions: list[str]
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def list_shards(root: Path) -> list[str]:
    """Sorted shard names under `root`. A flat folder of images is one shard, named after it."""
    root = Path(root)
    if not root.is_dir():
        raise InputMissing(
            f"image root {root} is not a folder; pass --root the folder that holds the shard "
            "folders (or one flat folder of images)"
        )
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        return subdirs
    if any(_is_image_entry(p) for p in root.iterdir()):
        return [root.name]
    return []


def select_shards(
    root: Path, names: list[str] | None = None, index: int | None = None
) -> list[str]:
    """The shards a stage works on: all, those named, or the index-th (a job array's task)."""
    shards = list_shards(root)
    if names:
        missing = sorted(set(names) - set(shards))
        if missing:
            raise UserError(
                f"--shards {', '.join(missing)}: not found under {root}; "
                f"its shards are: {', '.join(shards) or '(none)'}"
            )
        shards = [s for s in shards if s in names]
    if index is not None:
        if not 0 <= index < len(shards):
            valid = f"0..{len(shards) - 1}" if shards else "none"
            raise UserError(
                f"--shard_index {index} out of range: {root} has {len(shards)} shard(s) "
                f"(valid: {valid}); pass an index in range or drop the flag"
            )
        shards = [shards[index]]
    if not shards:
        raise InputMissing(
            f"no image shards under {root}: expected sub-folders of images, or image files "
            f"({', '.join(IMAGE_EXTS)}) directly in it; check --root"
        )
    return shards


def train_eval_shards(
    root: Path, train_shards: list[str] | None, eval_shards: list[str]
) -> tuple[list[str], list[str]]:
    """(training shards, held-out shards) under root: the training ones default to every shard
    that is not held out. A missing root or held-out shard is a clear error."""
    if not Path(root).is_dir():
        raise InputMissing(f"image root {root} is not a folder (--root)")
    shards = list_shards(root)
    missing = sorted(set(eval_shards) - set(shards))
    if missing:
        raise UserError(f"--eval_shards {missing} not under {root} (it has {shards})")
    train = train_shards or [s for s in shards if s not in eval_shards]
    if not train:
        raise UserError(f"no training shards under {root} (--train_shards)")
    return train, list(eval_shards)


def shard_folder(root: Path, shard: str) -> Path:
    root = Path(root)
    return root if (shard == root.name and not (root / shard).is_dir()) else root / shard


def list_images(root: Path, shard: str) -> list[ImageRecord]:
    """The shard's images sorted by key; the order fixes chunk boundaries, so it must be stable.

    Dangling symlinks are listed too: load_image reports them, so they end up in the manifest's
    skipped list instead of vanishing from the shard without a word.
    """
    folder = shard_folder(root, shard)
    records: list[ImageRecord] = []
    seen: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not _is_image_entry(p):
            continue
        if p.stem in seen:
            # Two files with one stem (a.jpg, a.png) would share a key: keep the first, say so.
            warnings.warn(
                f"{p}: duplicate key {p.stem!r} (also {seen[p.stem].name}); skipped", stacklevel=2
            )
            continue
        seen[p.stem] = p
        cap = p.with_suffix(".txt")
        records.append(ImageRecord(shard, p.stem, p, cap if cap.exists() else None))
    return records


def _is_image_entry(p: Path) -> bool:
    """An image file, or a dangling symlink with an image name (reported when loaded)."""
    if p.suffix.lower() not in IMAGE_EXTS or p.name.startswith("."):
        return False
    return p.is_file() or _is_dangling(p)


def _is_dangling(p: Path) -> bool:
    # exists() follows the link: False for a missing target (or a symlink loop).
    return p.is_symlink() and not p.exists()


def read_captions(path: Path | None, notes: list[str] | None = None) -> list[str]:
    """Non-empty lines of a caption file: one reference caption per line.

    Invalid UTF-8 is decoded with replacement characters rather than dropped (the rest of the
    caption is usually fine); when `notes` is given, a note says which file and where.
    """
    if path is None:
        return []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        text = data.decode("utf-8", errors="replace")
        if notes is not None:
            notes.append(
                f"caption file {path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                f"{e.start}); undecodable bytes replaced"
            )
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_image(
    record: ImageRecord,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Decode one file to RGB, or return why it cannot be used. Never raises for bad files."""
    notes: list[str] = []
    try:
        captions = read_captions(record.caption_path, notes)
    except OSError as e:
        captions, notes = [], [f"caption unreadable: {e}"]
    if record.caption_path is None:
        notes.append("no caption file")
    elif not captions:
        notes.append("empty caption")

    def bad(reason: str) -> LoadedImage:
        return LoadedImage(record, None, captions, error=reason, warnings=notes)

    if _is_dangling(record.path):
        return bad(f"dangling symlink -> {os.readlink(record.path)}")
    try:
        size = record.path.stat().st_size
    except OSError as e:
        return bad(f"unreadable: {e}")
    if size == 0:
        return bad("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We check the size ourselves below, before anything is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(record.path) as im:
                w, h = im.size
                if min(w, h) < min_side:
                    return bad(f"too small ({w}x{h}, minimum side {min_side})")
                if w * h > max_pixels:
                    return bad(f"too large ({w}x{h} > {max_pixels} pixels)")
                expected = _EXT_FORMATS.get(record.path.suffix.lower())
                if im.format and expected and im.format != expected:
                    notes.append(f"extension {record.path.suffix} but content is {im.format}")
                im.load()  # raises on truncated or corrupt data
                rgb = to_rgb(upright(im, notes), notes)
    except UnidentifiedImageError:
        return bad("not an image (cannot identify format)")
    except Image.DecompressionBombError as e:
        return bad(f"too large: {e}")
    except (OSError, SyntaxError, ValueError) as e:
        return bad(f"corrupt or truncated: {e}")
    return LoadedImage(record, rgb, captions, warnings=notes)


def upright(im: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF Orientation tag, so a phone photo is not encoded lying on its side."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as e:  # PIL's EXIF parser raises many kinds; the pixels are still good
        notes.append(f"EXIF unreadable ({type(e).__name__}: {e}); orientation not applied")
        return im
    if not isinstance(orientation, int) or orientation not in _ORIENTATIONS:
        if orientation != 1:
            notes.append(f"EXIF orientation {orientation!r} is not 1-8; ignored")
        return im
    out = ImageOps.exif_transpose(im)
    notes.append(
        f"EXIF orientation {orientation} applied: {_ORIENTATIONS[orientation]} "
        f"({im.width}x{im.height} -> {out.width}x{out.height})"
    )
    return out


def to_rgb(im: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, noting conversions a reader may want to know about."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert('RGB') clips 16-bit values at 255 (a white image): rescale instead.
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"converted {mode} (high bit depth) to RGB")
        return Image.fromarray(grey).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Composite on white: transparent pixels have arbitrary colour underneath.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"converted {mode} with alpha to RGB on white")
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    notes.append(f"converted {mode} to RGB")
    return im.convert("RGB")


class ImageShardDataset(torch.utils.data.Dataset):
    """Decodes the records of one shard in DataLoader workers; bad files come back as errors."""

    def __init__(
        self,
        records: list[ImageRecord],
        *,
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.records = records
        self.min_side = min_side
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> LoadedImage:
        return load_image(self.records[i], min_side=self.min_side, max_pixels=self.max_pixels)


@dataclass
class ImageBatch:
    """A collated batch: model inputs for the good images, and every image's report."""

    items: list[LoadedImage]  # all images of the batch, in order, good and bad
    good: list[LoadedImage]  # those that decoded (and preprocessed), in order
    inputs: dict[str, Any] | None  # preprocessor output for `good` (None when none is good)


class Collate:
    """Runs the adapter's preprocessor in the worker, so decoding and resizing overlap the model."""

    def __init__(
        self,
        preprocess: Callable[[list[Image.Image]], dict[str, Any]] | None,
        *,
        keep_images: bool = False,
    ) -> None:
        self.preprocess = preprocess
        self.keep_images = keep_images

    def __call__(self, items: list[LoadedImage]) -> ImageBatch:
        good = [it for it in items if it.image is not None]
        inputs = None
        if good and self.preprocess is not None:
            try:
                inputs = self.preprocess([it.image for it in good])
            except Exception as e:
                inputs = self._one_by_one(good, e)
                good = [it for it in good if it.error is None]
        if not self.keep_images:
            for it in good:
                it.image = (
                    None  # already preprocessed: don't ship full-size pixels between processes
                )
        return ImageBatch(items, good, inputs)

    def _one_by_one(self, good: list[LoadedImage], first_error: Exception) -> dict[str, Any] | None:
        """Find the images the preprocessor rejects, mark them, and preprocess the rest."""
        ok = []
        for it in good:
            try:
                self.preprocess([it.image])
                ok.append(it)
            except Exception as e:
                it.error, it.image = f"preprocessing failed: {e}", None
        if not ok:
            return None
        if len(ok) == len(good):
            raise first_error  # not an image's fault: a real bug, let it surface
        return self.preprocess([it.image for it in ok])


def image_loader(
    records: list[ImageRecord],
    preprocess: Callable[[list[Image.Image]], dict[str, Any]] | None,
    *,
    num_workers: int,
    batch_size: int | None = None,
    batches: list[list[int]] | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_images: bool = False,
) -> torch.utils.data.DataLoader:
    """Ordered, streaming loader over records; memory is O(batch x prefetch).

    Give either batch_size (consecutive batches) or batches (explicit lists of record indices).
    """
    if (batch_size is None) == (batches is None):
        raise ValueError("give exactly one of batch_size and batches")
    dataset = ImageShardDataset(records, min_side=min_side, max_pixels=max_pixels)
    collate = Collate(preprocess, keep_images=keep_images)
    if batches is not None:
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate
        )
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate
    )
