"""Sample data: deterministic bytes, captions that match the labels, no overlaps, idempotent."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from src.data.sample import (
    CELLS,
    COLOURS,
    SHAPES,
    make_scene,
    read_labels,
    scene_caption,
    write_photos,
    write_scenes,
)
from src.extract import make_sample
from src.metrics.captions import first_mention


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_scenes(tmp_path / "a", n=12, n_shards=3, size=64, seed=0)
    write_scenes(tmp_path / "b", n=12, n_shards=3, size=64, seed=0)
    write_scenes(tmp_path / "c", n=12, n_shards=3, size=64, seed=1)
    a, b, c = _bytes(tmp_path / "a"), _bytes(tmp_path / "b"), _bytes(tmp_path / "c")
    assert a == b and len(a) == 36
    assert sorted(p.split("/")[0] for p in a)[::12] == ["synth_00", "synth_01", "synth_02"]
    assert a != c


def test_caption_matches_labels_and_objects_do_not_overlap():
    for i in range(300):
        scene = make_scene(np.random.default_rng([0, i]))
        caption = scene_caption(scene)
        first = scene.objects[0]
        assert first_mention(caption, list(COLOURS)) == first.colour
        assert first_mention(caption, SHAPES) == first.shape
        assert caption.startswith(f"a {first.size} {first.colour} {first.shape} {first.position}")
        assert len({o.cell for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            assert CELLS[o.cell] == o.position
            col, row = o.cell
            # the whole shape lies inside its own cell: no overlap, nothing cut at the border
            assert col / 3 <= o.center[0] - o.radius and o.center[0] + o.radius <= (col + 1) / 3
            assert row / 3 <= o.center[1] - o.radius and o.center[1] + o.radius <= (row + 1) / 3


def test_attributes_are_roughly_uniform():
    colours, shapes, counts = Counter(), Counter(), Counter()
    for i in range(600):
        scene = make_scene(np.random.default_rng([0, i]))
        counts[len(scene.objects)] += 1
        for o in scene.objects:
            colours[o.colour] += 1
            shapes[o.shape] += 1
    assert set(colours) == set(COLOURS) and set(shapes) == set(SHAPES)
    assert max(colours.values()) / min(colours.values()) < 1.4
    assert max(shapes.values()) / min(shapes.values()) < 1.4
    assert set(counts) == {1, 2, 3}


def test_rendered_pixels_show_the_first_object_colour(tmp_path):
    (img,) = write_scenes(tmp_path, n=1, n_shards=1, size=96, seed=3)
    labels = read_labels(img)
    obj = labels["objects"][0]
    from PIL import Image

    arr = np.asarray(Image.open(img).convert("RGB")).astype(int)
    x, y = (int(c * 96) for c in obj["center"])
    assert np.abs(arr[y, x] - np.array(COLOURS[obj["colour"]])).max() < 40
    assert labels["caption"] == (img.with_suffix(".txt")).read_text().strip()


def test_photos_have_committed_captions(tmp_path):
    paths = write_photos(tmp_path)
    assert len(paths) >= 8  # scikit-image's offline colour photos + scikit-learn's two
    for p in paths:
        assert p.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert read_labels(p) is None


def test_main_is_idempotent(tmp_path, capsys):
    out = tmp_path / "sample"
    argv = ["--out", str(out), "--n_scenes", "8", "--shards", "2", "--size", "48"]
    assert make_sample.main(argv) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert make_sample.main(argv) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert "synth_00 4, synth_01 4" in capsys.readouterr().out
    labels = json.loads((out / "synth_01" / "scene_000004.json").read_text())
    assert labels["count"] == len(labels["objects"])
