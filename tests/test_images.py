"""Image loading: every bad-input kind is reported by name and reason, and the shard goes on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.extraction import extract_shard
from src.data.images import (
    Collate,
    image_loader,
    list_images,
    list_shards,
    load_image,
    select_shards,
)
from src.errors import UserError


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
    with pytest.raises(UserError, match="not a folder"):
        list_shards(tmp_path / "missing")


def test_exif_orientation_is_applied_and_noted(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    # 64 wide, 32 high: left half red, right half blue, so a rotation shows in the pixels.
    arr = np.zeros((32, 64, 3), dtype=np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    img.save(folder / "phone.jpg", exif=exif, quality=95)
    img.save(folder / "plain.jpg", quality=95)

    loaded = {r.key: load_image(r) for r in list_images(tmp_path, "s")}
    phone = loaded["phone"]
    assert phone.error is None and phone.image.size == (32, 64)
    with Image.open(folder / "phone.jpg") as raw:
        stored = np.asarray(raw.convert("RGB"))
    # Rotating 90 degrees clockwise: the stored left (red) half becomes the top.
    np.testing.assert_array_equal(np.asarray(phone.image), np.rot90(stored, k=-1))
    top, bottom = np.asarray(phone.image)[8, 16], np.asarray(phone.image)[56, 16]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    assert any("EXIF orientation 6" in n and "clockwise" in n for n in phone.warnings)
    plain = loaded["plain"]
    assert plain.image.size == (64, 32)
    assert not any("EXIF" in n for n in plain.warnings)


def test_caption_not_utf8_is_decoded_and_noted(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for stem in ("latin", "utf8"):
        Image.new("RGB", (20, 20)).save(folder / f"{stem}.png")
    (folder / "latin.txt").write_bytes("caf\u00e9 au lait\nsecond\n".encode("latin-1"))
    (folder / "utf8.txt").write_text("caf\u00e9 au lait\n", encoding="utf-8")

    loaded = {r.key: load_image(r) for r in list_images(tmp_path, "s")}
    latin = loaded["latin"]
    assert latin.error is None
    assert latin.captions == ["caf\ufffd au lait", "second"]
    (note,) = latin.warnings
    assert str(folder / "latin.txt") in note
    assert "not valid UTF-8" in note and "0xe9" in note and "offset 3" in note
    assert loaded["utf8"].captions == ["caf\u00e9 au lait"] and loaded["utf8"].warnings == []


def _shard_with_dangling_link(root: Path) -> Path:
    folder = root / "s"
    folder.mkdir(parents=True)
    Image.new("RGB", (20, 20), (10, 20, 30)).save(folder / "a_good.png")
    (folder / "b_gone.jpg").symlink_to("moved_away.jpg")  # relative target that does not exist
    Image.new("RGB", (20, 20)).save(root / "real.png")
    (folder / "c_link.png").symlink_to(root / "real.png")  # a working link: an ordinary image
    return folder


def test_dangling_symlink_is_listed_and_reported(tmp_path: Path) -> None:
    _shard_with_dangling_link(tmp_path / "images")
    records = list_images(tmp_path / "images", "s")
    assert [r.key for r in records] == ["a_good", "b_gone", "c_link"]
    loaded = {r.key: load_image(r) for r in records}
    assert loaded["b_gone"].image is None
    assert loaded["b_gone"].error == "dangling symlink -> moved_away.jpg"
    assert loaded["a_good"].error is None and loaded["c_link"].error is None
    # A flat folder holding only a dangling link is still a shard, so the link gets reported.
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert list_shards(flat) == ["flat"]


def test_dangling_symlink_is_in_the_shard_manifest(tmp_path: Path) -> None:
    _shard_with_dangling_link(tmp_path / "images")
    records = list_images(tmp_path / "images", "s")
    out = tmp_path / "out"

    def encode(inputs: dict, items: list) -> dict:
        return {"pre": [torch.ones(1, 3) for _ in items]}

    result = extract_shard(
        records,
        out,
        encode=encode,
        preprocess=lambda images: {"n": len(images)},
        kinds=("pre",),
        batch_size=2,
        num_workers=0,
        save_every=2,
        save_dtype=None,
        skip_existing=False,
        identity={"model": "fake"},
        manifest_fields={},
        progress=False,
    )
    assert result.n_ok == 2
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["n_images"] == 3 and manifest["n_ok"] == 2
    assert manifest["skipped"] == ["b_gone: dangling symlink -> moved_away.jpg"]


def test_shard_selection_errors_are_user_errors(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for shard in ("s0", "s1"):
        (root / shard).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(root / shard / "a.png")
    assert select_shards(root, index=1) == ["s1"]
    with pytest.raises(UserError, match=r"--shards nope: not found under .*: s0, s1"):
        select_shards(root, ["s0", "nope"])
    with pytest.raises(UserError, match=r"--shard_index 2 out of range: .* 2 shard\(s\)"):
        select_shards(root, index=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no image shards under .*empty.*check --root"):
        select_shards(empty)
    with pytest.raises(UserError, match="missing is not a folder; pass --root"):
        select_shards(tmp_path / "missing")
