"""Sample data that needs no network: real photos shipped by scikit-image / scikit-learn, and
deterministic synthetic scenes whose captions and labels come from the scene itself (charts,
tables and documents: src/data/sample_types.py).

Every image has a <stem>.json label file whose "data_type" says what it is: "scene", "photo",
"chart", "table" or "document" (DATA_TYPES); per-type comparisons (seed A's) group by it.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from src.data.io import atomic_write, write_unsynced

PHOTO_CAPTIONS = Path(__file__).resolve().parents[2] / "sample" / "photo_captions"
PHOTO_SHARD = "photos"
DATA_TYPES = ("scene", "photo", "chart", "table", "document")

# Colours far apart in hue: frozen ImageNet features confuse blue/purple and red/orange, which
# would cap any caption accuracy measured on these scenes.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "yellow": (240, 215, 40),
    "green": (35, 165, 60),
    "blue": (40, 80, 225),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 0.075, "large": 0.145}  # radius as a share of the image side
# A 3x3 grid of cells, one object per cell, so objects never overlap; the phrase names the cell.
CELLS = {
    (0, 0): "at the top left", (1, 0): "at the top", (2, 0): "at the top right",
    (0, 1): "on the left", (1, 1): "in the center", (2, 1): "on the right",
    (0, 2): "at the bottom left", (1, 2): "at the bottom", (2, 2): "at the bottom right",
}  # fmt: skip


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str  # the caption's phrase for the object's cell
    cell: tuple[int, int]  # (column, row) in the 3x3 grid
    center: tuple[float, float]  # in [0, 1] image coordinates
    radius: float  # share of the image side


@dataclass
class Scene:
    background: tuple[int, int, int]
    objects: list[SceneObject]


def make_scene(rng: np.random.Generator) -> Scene:
    """1-3 objects in distinct grid cells with random shape, colour, size and jitter."""
    n = int(rng.integers(1, 4))
    cells = [list(CELLS)[i] for i in rng.choice(len(CELLS), size=n, replace=False)]
    grey = int(rng.integers(95, 135))
    objects = []
    for cell in cells:
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size]
        # centre jittered inside the cell, keeping the whole shape inside it
        slack = 1 / 3 / 2 - r - 0.01
        cx = (cell[0] + 0.5) / 3 + float(rng.uniform(-slack, slack))
        cy = (cell[1] + 0.5) / 3 + float(rng.uniform(-slack, slack))
        objects.append(
            SceneObject(
                shape=str(rng.choice(SHAPES)),
                colour=str(rng.choice(list(COLOURS))),
                size=size,
                position=CELLS[cell],
                cell=cell,
                center=(cx, cy),
                radius=r,
            )
        )
    return Scene(background=(grey, grey, grey + 5), objects=objects)


def scene_caption(scene: Scene) -> str:
    """'a large red circle at the top left and a small blue star in the center.'"""
    parts = [f"a {o.size} {o.colour} {o.shape} {o.position}" for o in scene.objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "."


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.radians([-90, 30, 150])]
    if shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = np.radians(-90 + 36 * i)
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts
    raise ValueError(f"no polygon for {shape!r}")


def render_scene(scene: Scene, size: int = 224, supersample: int = 3) -> Image.Image:
    """Draw at `supersample` x the size and downscale: anti-aliased edges, like a photo's."""
    big = size * supersample
    im = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(im)
    for o in scene.objects:
        cx, cy, r = o.center[0] * big, o.center[1] * big, o.radius * big
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_polygon(o.shape, cx, cy, r), fill=fill)
    return im.resize((size, size), Image.Resampling.LANCZOS)


def scene_labels(scene: Scene, size: int) -> dict:
    """Everything a metric may need: per object attributes and pixel bounding boxes."""
    objects = []
    for o in scene.objects:
        d = asdict(o)
        r = o.radius * size
        cx, cy = o.center[0] * size, o.center[1] * size
        d["bbox"] = [round(cx - r, 1), round(cy - r, 1), round(cx + r, 1), round(cy + r, 1)]
        objects.append(d)
    return {
        "data_type": "scene",
        "count": len(objects),
        "objects": objects,
        "caption": scene_caption(scene),
        "size": size,
    }


def read_label_file(image_path: Path) -> dict | None:
    """The labels saved beside an image (<stem>.json) whatever its type, or None."""
    p = Path(image_path).with_suffix(".json")
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def data_type_of(labels: dict | None) -> str | None:
    """A label file's data type; scenes written before types existed have none but objects."""
    if labels is None:
        return None
    return labels.get("data_type", "scene" if "objects" in labels else None)


def read_labels(image_path: Path) -> dict | None:
    """The scene labels saved beside an image (<stem>.json), or None for a non-scene image
    (a photo, chart, table or document: their labels are read with read_label_file)."""
    labels = read_label_file(image_path)
    return labels if data_type_of(labels) == "scene" else None


def is_written(path: Path) -> bool:
    """The file is there and not empty. An empty one can only be left by a power loss before
    make_sample's sync (write_if_missing), in a run whose manifest was never written."""
    return path.is_file() and path.stat().st_size > 0


def write_if_missing(path: Path, data: bytes) -> bool:
    """Write `data` unless the file is there (is_written): the sample is only ever completed.

    Through a temporary name but without an fsync per file (600 scenes, 1,800 files: 6.5-6.8 s
    against 7.8-9.0 s with one each); make_sample syncs once before the manifest that says the
    sample is whole.
    """
    if is_written(path):
        return False
    write_unsynced(path, data)
    return True


def jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def label_bytes(labels: dict) -> bytes:
    """A <stem>.json label file's bytes (stable: same labels, same bytes)."""
    return (json.dumps(labels, indent=1) + "\n").encode()


def scene_shard(i: int, n: int, n_shards: int) -> str:
    """Contiguous blocks of scenes per shard: synth_00 gets the first n / n_shards."""
    per = -(-n // n_shards)
    return f"synth_{i // per:02d}"


def scene_files(seed: int, i: int, size: int) -> tuple[bytes, bytes, bytes]:
    """Scene i's caption (.txt), labels (.json) and image (.jpg) bytes: a function of (seed, i)."""
    scene = make_scene(np.random.default_rng([seed, i]))
    labels = scene_labels(scene, size)
    image = jpeg_bytes(render_scene(scene, size))
    return (labels["caption"] + "\n").encode(), label_bytes(labels), image


def write_scenes(
    out_root: Path,
    n: int = 2000,
    n_shards: int = 4,
    size: int = 224,
    seed: int = 0,
    workers: int = 1,
) -> list[Path]:
    """n scenes as <out_root>/synth_XX/scene_<i>.jpg + .txt caption + .json labels.

    Scene i depends only on (seed, i); existing files are kept (a rerun writes nothing new).
    workers > 1 renders the missing scenes in that many processes (the same bytes).
    """
    stems = [Path(out_root) / scene_shard(i, n, n_shards) / f"scene_{i:06d}" for i in range(n)]
    done = [is_written(s.with_suffix(".jpg")) and is_written(s.with_suffix(".json")) for s in stems]
    for stem in (s for s, d in zip(stems, done, strict=True) if d):
        _add_data_type(stem.with_suffix(".json"), "scene")
    missing = [i for i, d in enumerate(done) if not d]
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(missing) > 1:
            spawn = multiprocessing.get_context("spawn")  # no fork of a parent's thread pools
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=spawn))
            files = pool.map(scene_files, repeat(seed), missing, repeat(size), chunksize=64)
        else:
            files = map(scene_files, repeat(seed), missing, repeat(size))
        for i, (txt, labels, image) in zip(missing, files, strict=True):
            write_if_missing(stems[i].with_suffix(".txt"), txt)
            write_if_missing(stems[i].with_suffix(".json"), labels)
            write_if_missing(stems[i].with_suffix(".jpg"), image)
    return [stem.with_suffix(".jpg") for stem in stems]


def _add_data_type(path: Path, data_type: str) -> None:
    """A label file from before data types existed gets its type (first, as a new file has it),
    so an older sample folder completed by a rerun matches a fresh one byte for byte."""
    labels = json.loads(path.read_text(encoding="utf-8"))
    if "data_type" not in labels:
        data = label_bytes({"data_type": data_type, **labels})
        atomic_write(path, lambda tmp: tmp.write_bytes(data))


def photo_arrays() -> dict[str, tuple[str, np.ndarray]]:
    """The colour photos shipped inside scikit-image and scikit-learn (no download), by stem:
    (the package that ships it, its pixels)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos: dict[str, tuple[str, np.ndarray]] = {}
    for cap in sorted(PHOTO_CAPTIONS.glob("*.txt")):
        loader = getattr(skimage.data, cap.stem, None)
        if loader is not None:
            try:
                photos[cap.stem] = ("scikit-image", loader())
            except (ModuleNotFoundError, OSError, ValueError):
                continue  # a file this scikit-image build would have to download
    sk = load_sample_images()
    for name, im in zip(sk.filenames, sk.images, strict=True):
        photos[Path(name).stem] = ("scikit-learn", im)
    return {k: v for k, v in photos.items() if (PHOTO_CAPTIONS / f"{k}.txt").exists()}


def write_photos(out_root: Path) -> list[Path]:
    """<out_root>/photos/<stem>.jpg with the committed caption and a photo label beside it."""
    folder = Path(out_root) / PHOTO_SHARD
    paths = []
    for stem, (source, arr) in sorted(photo_arrays().items()):
        img = Image.fromarray(arr)
        if img.mode == "RGBA":  # the scikit-image logo: composite its transparency on white
            canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(canvas, img)
        path = folder / f"{stem}.jpg"
        caption = (PHOTO_CAPTIONS / f"{stem}.txt").read_bytes()
        labels = {
            "data_type": "photo",
            "source": source,
            "captions": caption.decode("utf-8").strip().splitlines(),
            "width": img.width,
            "height": img.height,
        }
        write_if_missing(path.with_suffix(".txt"), caption)
        write_if_missing(path.with_suffix(".json"), label_bytes(labels))
        write_if_missing(path, jpeg_bytes(img.convert("RGB")))  # last: its files are there
        paths.append(path)
    return paths


def file_count(folder: Path) -> int:
    return sum(1 for p in Path(folder).glob("*.jpg")) if Path(folder).is_dir() else 0
