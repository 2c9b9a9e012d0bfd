"""Image loading: every bad-input kind is reported by name and reason, and the shard goes on."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.images import (
    Collate,
    image_loader,
    list_images,
    list_shards,
    load_image,
)


def _jpeg_bytes(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def make_zoo(folder: Path) -> dict[str, str]:
    """One file per bad-input kind; returns stem -> the word its report must contain."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "good.jpg")
    (folder / "good.txt").write_text("a good picture\n", encoding="utf-8")
    (folder / "corrupt.jpg").write_bytes(b"this is not an image at all" * 10)
    full = io.BytesIO()
    Image.fromarray(noise).save(full, format="JPEG")
    (folder / "truncated.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (40, 40), (0, 0, 255, 0)).save(folder / "rgba.png")
    pal = Image.new("P", (40, 40), 3)
    pal.putpalette([10, 10, 10, 200, 0, 0, 0, 200, 0, 0, 0, 200])  # index 3: blue, transparent
    pal.save(folder / "palette.png", transparency=3)
    Image.new("L", (40, 40), 128).save(folder / "grey.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(folder / "deep16.png")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(folder / "tiny.png")
    Image.new("L", (10000, 10000), 0).save(folder / "huge.png", optimize=True)
    (folder / "wrongext.jpg").write_bytes(_png_bytes())
    (folder / "emptycap.jpg").write_bytes(_jpeg_bytes())
    (folder / "emptycap.txt").write_text("  \n", encoding="utf-8")
    for stem in ("cmyk", "rgba", "palette", "grey", "deep16", "wrongext"):
        (folder / f"{stem}.txt").write_text("caption\n", encoding="utf-8")
    return {
        "corrupt": "not an image",
        "truncated": "truncated",
        "zero": "0 bytes",
        "tiny": "too small",
        "huge": "too large",
    }


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), (0, 200, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_bad_kind_is_reported_and_the_rest_loads(tmp_path: Path) -> None:
    errors = make_zoo(tmp_path / "zoo")
    loaded = {r.key: load_image(r) for r in list_images(tmp_path, "zoo")}
    for key, word in errors.items():
        assert loaded[key].image is None, key
        assert word in loaded[key].error, (key, loaded[key].error)
    usable = set(loaded) - set(errors)
    assert usable == {"good", "cmyk", "rgba", "palette", "grey", "deep16", "wrongext", "emptycap"}
    for key in usable:
        it = loaded[key]
        assert it.error is None and it.image is not None, key
        assert it.image.mode == "RGB", key
    notes = {k: " ".join(loaded[k].warnings) for k in usable}
    assert "CMYK" in notes["cmyk"]
    assert "alpha" in notes["rgba"] and "alpha" in notes["palette"]
    assert "high bit depth" in notes["deep16"]
    assert "content is PNG" in notes["wrongext"]
    assert "empty caption" in notes["emptycap"]
    assert notes["good"] == ""
    assert "no caption file" in " ".join(loaded["corrupt"].warnings)


def test_conversions_keep_the_picture(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    loaded = {r.key: load_image(r) for r in list_images(tmp_path, "zoo")}
    # 16-bit 40000/65535 -> about 156, not clipped to white.
    assert np.asarray(loaded["deep16"].image)[0, 0].tolist() == [156, 156, 156]
    # Transparent pixels composite onto white, not onto whatever colour sits under alpha = 0.
    assert np.asarray(loaded["rgba"].image)[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(loaded["palette"].image)[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(loaded["grey"].image)[0, 0].tolist() == [128, 128, 128]


def test_loader_streams_in_order_with_workers(tmp_path: Path) -> None:
    make_zoo(tmp_path / "zoo")
    records = list_images(tmp_path, "zoo")
    seen = []
    for batch in image_loader(records, lambda ims: {"n": len(ims)}, batch_size=4, num_workers=2):
        seen += [it.record.key for it in batch.items]
        assert batch.inputs is None or batch.inputs["n"] == len(batch.good)
        assert all(it.image is None for it in batch.items)  # pixels not shipped back
    assert seen == [r.key for r in records]


def test_preprocessor_failure_of_one_image_spares_the_batch(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for i, w in enumerate([30, 31, 32]):
        Image.new("RGB", (w, 30)).save(folder / f"k{i}.png")

    def picky(images: list[Image.Image]) -> dict:
        if any(im.size[0] == 31 for im in images):
            raise ValueError("width 31 is not supported")
        return {"n": len(images)}

    items = [load_image(r) for r in list_images(tmp_path, "s")]
    batch = Collate(picky)(items)
    assert [it.record.key for it in batch.good] == ["k0", "k2"]
    assert batch.inputs == {"n": 2}
    assert "width 31" in items[1].error


def test_shards_flat_folder_and_captions(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (20, 20)).save(flat / "a.jpg")
    (flat / "a.txt").write_text("first caption\nsecond caption\n\n", encoding="utf-8")
    (flat / "notes.md").write_text("not an image", encoding="utf-8")
    assert list_shards(flat) == ["flat"]
    (rec,) = list_images(flat, "flat")
    assert load_image(rec).captions == ["first caption", "second caption"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_shards(tmp_path / "missing")
