"""Dataset import: a dataset built with datasets' Image feature (save_to_disk and parquet)
round-trips into image shards; bad rows are named; a resume rewrites only what is missing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data import dataset_import
from src.data.dataset_import import caption_texts, convert_image
from src.data.images import list_images, list_shards, load_image
from src.extract import import_dataset

N_ROWS = 10
CORRUPT, EMPTY, RGBA, JPEG = 2, 3, 4, 1


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _gradient(i: int) -> np.ndarray:
    """Smooth images: JPEG at quality 95 keeps them within a few levels."""
    y, x = np.mgrid[0:32, 0:40]
    return np.stack([x * 6, y * 7, np.full_like(x, 20 * i)], -1).astype(np.uint8)


def _rows() -> tuple[list[dict], list[str], dict[int, np.ndarray], bytes]:
    images, captions, pixels = [], [], {}
    buf = io.BytesIO()
    Image.fromarray(_gradient(9)).save(buf, format="JPEG", quality=80)
    jpeg = buf.getvalue()
    for i in range(N_ROWS):
        pixels[i] = _gradient(i)
        data = _png(pixels[i])
        if i == JPEG:
            data = jpeg
        elif i == CORRUPT:
            data = data[:40]  # a PNG cut short: the header says PNG, the pixels are missing
        elif i == RGBA:
            rgba = np.dstack([pixels[i], np.full((32, 40), 255, np.uint8)])
            data = _png(rgba)
        images.append({"bytes": data, "path": None})
        captions.append("" if i == EMPTY else f"  image number {i}\nsecond half {i} ")
    return images, captions, pixels, jpeg


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The same 10 rows saved with save_to_disk and as parquet."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    root = tmp_path_factory.mktemp("hf")
    images, captions, pixels, jpeg = _rows()
    feats = Features({"image": ImageFeature(), "caption": Value("string"), "id": Value("int32")})
    ds = Dataset.from_dict(
        {"image": images, "caption": captions, "id": list(range(N_ROWS))}, features=feats
    )
    ds.save_to_disk(str(root / "disk"))
    (root / "pq").mkdir()
    ds.to_parquet(str(root / "pq" / "train-00000-of-00001.parquet"))
    return {
        "disk": root / "disk",
        "parquet": root / "pq",
        "pixels": pixels,
        "jpeg": jpeg,
        "captions": captions,
    }


def run_import(dataset: Path | str, out: Path, *extra: str) -> int:
    return import_dataset.main(
        [
            "--dataset",
            str(dataset),
            "--out",
            str(out),
            "--shard_size",
            "4",
            "--no_progress",
            "--num_workers",
            "0",
            *extra,
        ]
    )


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def count_conversions(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Spy on the image conversion: the rows (in call order) it was asked for; optionally stop
    the run like a kill (KeyboardInterrupt) on the fail_at-th call."""
    calls: list[int] = []
    real = dataset_import.convert_image

    def spy(value, *a, **k):
        calls.append(len(calls))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(value, *a, **k)

    monkeypatch.setattr(dataset_import, "convert_image", spy)
    return calls


@pytest.mark.parametrize("kind", ["disk", "parquet"])
def test_round_trip_with_bad_rows_named(built, tmp_path, kind, capsys):
    out = tmp_path / "imported"
    assert run_import(built[kind], out) == 0
    assert list_shards(out) == ["shard_00000", "shard_00001", "shard_00002"]
    seen = {}
    for shard in list_shards(out):
        for rec in list_images(out, shard):
            loaded = load_image(rec)
            assert loaded.error is None and not loaded.warnings, (rec.path, loaded.warnings)
            seen[int(rec.key.removeprefix("row_"))] = (rec, loaded)
    assert sorted(seen) == [i for i in range(N_ROWS) if i not in (CORRUPT, EMPTY)]
    for i, (rec, loaded) in seen.items():
        assert loaded.captions == [f"image number {i} second half {i}"]  # one line per caption
        if i == JPEG:
            assert rec.path.read_bytes() == built["jpeg"]  # JPEG bytes kept as they were
            continue
        got = np.asarray(loaded.image, dtype=float)
        assert np.abs(got - built["pixels"][i]).mean() < 2.0, i  # re-encoded at quality 95
    first = json.loads((out / "shard_00000" / "manifest.json").read_text())
    assert first["rows"] == [0, 4] and first["n_images"] == 2
    assert first["skipped"][0].startswith("row 2: undecodable image")
    assert first["skipped"][1] == "row 3: empty caption"
    second = json.loads((out / "shard_00001" / "manifest.json").read_text())
    assert second["notes"] == ["row 4: converted RGBA with alpha to RGB on white"]
    assert json.loads((out / "shard_00002" / "manifest.json").read_text())["end_of_data"]
    top = json.loads((out / "manifest.json").read_text())
    assert (top["n_rows"], top["n_images"], top["n_skipped"]) == (10, 8, 2)
    assert top["layout"]["caption_columns"] == ["caption"]  # found by name
    assert "8 images from 10 rows in 3 shards" in capsys.readouterr().out


def test_both_loaders_write_the_same_bytes(built, tmp_path):
    assert run_import(built["disk"], tmp_path / "a") == 0
    assert run_import(built["parquet"], tmp_path / "b", "--num_workers", "2") == 0
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}


@pytest.mark.parametrize("kind", ["disk", "parquet"])
def test_resume_rewrites_only_the_deleted_shard(built, tmp_path, kind, monkeypatch, capsys):
    out = tmp_path / "imported"
    assert run_import(built[kind], out) == 0
    before = snapshot(out)
    for p in (out / "shard_00001").iterdir():
        p.unlink()
    (out / "shard_00001").rmdir()
    calls = count_conversions(monkeypatch)
    capsys.readouterr()
    assert run_import(built[kind], out, "--skip_existing") == 0
    assert len(calls) == 4  # rows 4-7 only: the other shards' rows are not even decoded
    assert "seeked to row 4" in capsys.readouterr().out  # not read from row 0
    after = snapshot(out)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    untouched = [k for k in before if not k.startswith("shard_00001")]
    assert all(after[k][1] == before[k][1] for k in untouched)
    # finished: nothing left to do, nothing rewritten
    assert run_import(built[kind], out, "--skip_existing") == 0
    assert "nothing to do" in capsys.readouterr().out and snapshot(out) == after


def test_a_killed_run_resumes_to_the_same_result(built, tmp_path, monkeypatch):
    assert run_import(built["parquet"], tmp_path / "clean") == 0
    out = tmp_path / "killed"
    count_conversions(monkeypatch, fail_at=7)  # dies in shard_00001 (row 6)
    with pytest.raises(KeyboardInterrupt):
        run_import(built["parquet"], out)
    assert (out / "shard_00000" / "manifest.json").exists()
    assert not (out / "shard_00001" / "manifest.json").exists()
    calls = count_conversions(monkeypatch)
    assert run_import(built["parquet"], out, "--skip_existing") == 0
    assert len(calls) == 6  # rows 4-9
    clean = {k: v[0] for k, v in snapshot(tmp_path / "clean").items()}
    assert {k: v[0] for k, v in snapshot(out).items()} == clean


def test_max_items_and_a_longer_rerun(built, tmp_path, monkeypatch):
    out = tmp_path / "imported"
    assert run_import(built["parquet"], out, "--max_items", "6", "--skip_existing") == 0
    assert [len(list_images(out, s)) for s in list_shards(out)] == [2, 2]  # rows 0-3, 4-5
    calls = count_conversions(monkeypatch)
    assert run_import(built["parquet"], out, "--skip_existing") == 0
    assert len(calls) == 6  # shard_00000 kept; shard_00001 grows to rows 4-7, then rows 8-9
    assert len(list_shards(out)) == 3


def test_list_and_dict_captions(tmp_path):
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    feats = Features(
        {
            "image": ImageFeature(),
            "captions": Sequence(Value("string")),  # Flickr30k's five references
            "sentences": {"raw": Value("string"), "sentid": Value("int32")},  # COCO's sentence dict
        }
    )
    png = {"bytes": _png(_gradient(1)), "path": None}
    ds = Dataset.from_dict(
        {
            "image": [png] * 3,
            "captions": [["a dog.", "a brown dog."], [], ["", "a cat."]],
            "sentences": [
                {"raw": "one", "sentid": 1},
                {"raw": "two", "sentid": 2},
                {"raw": " ", "sentid": 3},
            ],
        },
        features=feats,
    )
    ds.to_parquet(str(tmp_path / "data.parquet"))
    out = tmp_path / "lists"
    assert run_import(tmp_path / "data.parquet", out, "--caption_column", "captions") == 0
    shard = out / "shard_00000"
    assert (shard / "row_000000000.txt").read_text() == "a dog.\na brown dog.\n"
    assert not (shard / "row_000000001.jpg").exists()
    assert (shard / "row_000000002.txt").read_text() == "a cat.\n"
    m = json.loads((shard / "manifest.json").read_text())
    assert m["skipped"] == ["row 1: empty caption"]
    assert m["notes"] == ["row 2: 1 of 2 caption entries unusable (empty), dropped"]
    out2 = tmp_path / "dicts"
    assert run_import(tmp_path / "data.parquet", out2, "--caption_column", "sentences") == 0
    assert (out2 / "shard_00000" / "row_000000001.txt").read_text() == "two\n"
    m2 = json.loads((out2 / "shard_00000" / "manifest.json").read_text())
    assert m2["skipped"] == ["row 2: empty caption"]
    # both columns: the references of each row together
    out3 = tmp_path / "both"
    assert (
        run_import(tmp_path / "data.parquet", out3, "--caption_column", "captions,sentences") == 0
    )
    assert (out3 / "shard_00000" / "row_000000001.txt").read_text() == "two\n"


def test_caption_shapes():
    assert caption_texts("a  cat\non a mat ").texts == ["a cat on a mat"]
    assert caption_texts(None).error == "missing caption"
    assert caption_texts(" \n").error == "empty caption"
    assert caption_texts([]).error == "empty caption"
    assert caption_texts(["a", "", "b"]).texts == ["a", "b"]
    assert caption_texts({"raw": "x", "tokens": ["x"]}).texts == ["x"]
    assert caption_texts([{"raw": "x"}, {"caption": "y"}]).texts == ["x", "y"]
    assert caption_texts({"raw": ["x", "y"], "sentid": [1, 2]}).texts == ["x", "y"]  # Sequence
    assert caption_texts({"id": 3}).error == "caption is a dict without a text field (keys: id)"
    assert caption_texts(7).error == "caption is int, not text"


def test_image_shapes(tmp_path):
    png = _png(_gradient(2))
    (tmp_path / "a.png").write_bytes(png)
    assert convert_image({"bytes": None, "path": "a.png"}, tmp_path).data is not None
    assert convert_image(str(tmp_path / "a.png")).data is not None
    assert convert_image(png).data[:3] == b"\xff\xd8\xff"  # PNG re-encoded as JPEG
    assert convert_image(None).error == "missing image"
    assert convert_image(b"").error == "empty image data (0 bytes)"
    assert convert_image(b"not an image").error.startswith("undecodable image")
    assert "unreadable" in convert_image({"bytes": None, "path": "gone.png"}, tmp_path).error
    assert convert_image(_png(np.zeros((4, 40, 3), np.uint8))).error.startswith("too small")
    assert "URL" in convert_image("https://example.com/a.jpg").error


def test_imagefolder_is_detected(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    lines = []
    for i in range(3):
        Image.fromarray(_gradient(i)).save(folder / f"im{i}.png")
        lines.append(json.dumps({"file_name": f"im{i}.png", "text": f"picture {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert run_import(folder, out) == 0
    caps = sorted(p.read_text() for p in (out / "shard_00000").glob("*.txt"))
    assert caps == ["picture 0\n", "picture 1\n", "picture 2\n"]
    assert json.loads((out / "manifest.json").read_text())["source"]["format"] == "imagefolder"


def test_hub_ids_stream(built, tmp_path, monkeypatch):
    """No hub here: check what a hub id is loaded with (streaming, the resolved revision)."""
    import datasets

    calls = []
    real = datasets.load_dataset

    def fake(path, **kw):
        calls.append({"path": path, **kw})
        files = [str(p) for p in sorted(built["parquet"].glob("*.parquet"))]
        return real("parquet", data_files=files, split="train", streaming=kw["streaming"])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(dataset_import, "hub_revision", lambda repo, rev: "abc123")
    out = tmp_path / "hub"
    assert (
        run_import("someorg/captions", out, "--split", "test", "--config", "c1", "--max_items", "5")
        == 0
    )
    assert calls[0] == {
        "path": "someorg/captions",
        "name": "c1",
        "revision": "abc123",
        "split": "test",
        "streaming": True,
    }
    top = json.loads((out / "manifest.json").read_text())
    assert top["source"]["revision"] == "abc123" and top["n_rows"] == 5


def test_user_errors_are_one_line(built, tmp_path, capsys):
    assert run_import(tmp_path / "nothing_here", tmp_path / "o") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert run_import(built["disk"], tmp_path / "o", "--caption_column", "nope") == 2
    err = capsys.readouterr().err
    assert "--caption_column nope: no such column (columns: image, caption, id)" in err
    # another dataset into a finished --out: refused, not mixed in
    assert run_import(built["disk"], tmp_path / "o2") == 0
    other = tmp_path / "other.parquet"
    other.write_bytes((built["parquet"] / "train-00000-of-00001.parquet").read_bytes())
    assert run_import(other, tmp_path / "o2", "--skip_existing") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "use another --out" in err and "Traceback" not in err
