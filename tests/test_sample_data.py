"""Sample data: deterministic bytes, captions that match the labels, no overlaps, idempotent."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from src.data.sample import (
    CELLS,
    COLOURS,
    DATA_TYPES,
    SHAPES,
    make_scene,
    read_label_file,
    read_labels,
    scene_caption,
    write_photos,
    write_scenes,
)
from src.data.sample_types import CHART_COLOURS, TYPE_SHARDS, typed_item, write_typed
from src.extract import make_sample
from src.metrics.captions import first_mention


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_scenes(tmp_path / "a", n=12, n_shards=3, size=64, seed=0)
    write_scenes(tmp_path / "b", n=12, n_shards=3, size=64, seed=0, workers=2)  # 2 processes
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
        caption = p.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert caption
        assert read_labels(p) is None  # not a scene
        labels = read_label_file(p)
        assert labels["data_type"] == "photo" and labels["captions"] == caption.splitlines()
        assert labels["source"] in ("scikit-image", "scikit-learn")


def test_main_is_idempotent(tmp_path, capsys):
    out = tmp_path / "sample"
    argv = ["--out", str(out), "--n_scenes", "8", "--shards", "2", "--size", "48",
            "--n_per_type", "2", "--n_tables", "3"]  # fmt: skip
    assert make_sample.main(argv) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert make_sample.main(argv) == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    printed = capsys.readouterr().out
    assert "charts 2, documents 2" in printed and "synth_00 4, synth_01 4, tables 3" in printed
    labels = json.loads((out / "synth_01" / "scene_000004.json").read_text())
    assert labels["count"] == len(labels["objects"])
    record = json.loads((out / "manifest.json").read_text())["sample"]
    assert (record["n_charts"], record["n_tables"], record["n_documents"]) == (2, 3, 2)
    # every image has its labels, and its folder says which type it is
    shard_type = {"photos": "photo", "synth_00": "scene", "synth_01": "scene",
                  **{shard: t for t, shard in TYPE_SHARDS.items()}}  # fmt: skip
    for img in out.rglob("*.jpg"):
        assert read_label_file(img)["data_type"] == shard_type[img.parent.name], img
    # other counts: another sample, not "nothing to do"
    assert make_sample.main([*argv[:-2], "--n_tables", "4"]) == 0
    assert len(list((out / "tables").glob("*.jpg"))) == 4


def test_a_rerun_rewrites_the_empty_files_a_power_loss_can_leave(tmp_path):
    # the files are written without an fsync each (make_sample syncs once before its manifest):
    # a power loss before that sync can leave empty files under their real names, and a
    # temporary file beside them
    out = tmp_path / "sample"
    argv = ["--out", str(out), "--n_scenes", "4", "--shards", "1", "--size", "48",
            "--n_per_type", "0", "--n_charts", "1", "--no_photos"]  # fmt: skip
    assert make_sample.main(argv) == 0
    whole = _bytes(out)
    (out / "manifest.json").unlink()
    emptied = [out / "synth_00" / "scene_000002.jpg", out / "synth_00" / "scene_000003.json",
               out / "charts" / "chart_000000.jpg"]  # fmt: skip
    for f in emptied:
        f.write_bytes(b"")
    (out / "synth_00" / ".scene_000001.jpg.tmp").write_bytes(b"partial")
    assert make_sample.main(argv) == 0
    again = _bytes(out)

    def files(d: dict[str, bytes]) -> dict[str, bytes]:
        return {k: v for k, v in d.items() if not k.endswith((".tmp", "manifest.json"))}

    assert files(again) == files(whole) and len(files(whole)) == 15
    assert all(f.stat().st_size > 0 for f in emptied)


def test_scene_labels_carry_their_type_also_in_an_older_sample(tmp_path):
    (img,) = write_scenes(tmp_path / "new", n=1, n_shards=1, size=64)
    fresh = img.with_suffix(".json").read_bytes()
    assert json.loads(fresh)["data_type"] == "scene"
    # a label file written before data types existed gets its type on the next run
    old = tmp_path / "old"
    (img_old,) = write_scenes(old, n=1, n_shards=1, size=64)
    labels = json.loads(img_old.with_suffix(".json").read_text())
    del labels["data_type"]
    img_old.with_suffix(".json").write_text(json.dumps(labels, indent=1) + "\n")
    assert read_labels(img_old)["count"] == labels["count"]  # still read as a scene
    write_scenes(old, n=1, n_shards=1, size=64)
    assert img_old.with_suffix(".json").read_bytes() == fresh


def _share_distinct(captions: list[str]) -> float:
    return len(set(captions)) / len(captions)


def test_typed_captions_are_distinct_and_match_their_labels():
    for data_type in TYPE_SHARDS:
        items = [typed_item(data_type, 0, i) for i in range(300)]
        assert all(it["data_type"] == data_type for it in items)
        # one text per image, not one per type (the seed's degenerate per-type CKA)
        assert _share_distinct([it["caption"] for it in items]) >= 0.99, data_type
    charts = [typed_item("chart", 0, i) for i in range(300)]
    assert {c["chart_type"] for c in charts} == {"bar", "line", "pie", "scatter"}
    for c in charts:
        cap = c["caption"]
        assert f'titled "{c["title"]}"' in cap
        word = {"bar": "bar chart", "line": "line chart", "pie": "pie chart",
                "scatter": "scatter plot"}[c["chart_type"]]  # fmt: skip
        assert cap.startswith(f"A {word}") or cap.startswith(f"A {c.get('colour')} {word}")
        if c["chart_type"] == "bar":
            assert f"with {c['n_items']} {c['colour']} bars" in cap
            assert f"at {max(c['values'])}." in cap
        if c["chart_type"] == "line":
            assert c["trend"] in ("flat", "peaking") or c["trend"] in cap
            rises = c["values"][-1] > c["values"][0]
            assert c["trend"] != "rising" or rises
            assert c["trend"] != "falling" or not rises
        if c["chart_type"] == "scatter":
            r = c["r"]
            assert {"positive": r > 0.5, "negative": r < -0.5, "no": abs(r) < 0.5}[
                c["correlation"]
            ], c
    for t in (typed_item("table", 0, i) for i in range(100)):
        assert len(t["rows"]) == t["n_rows"] and all(len(r) == t["n_cols"] for r in t["rows"])
        assert (
            f"{t['n_rows']} rows and {t['n_cols']} columns ({', '.join(t['header'])})"
            in (t["caption"])
        )
        assert t["caption"].endswith(f"the first row reads {', '.join(t['rows'][0])}.")
    for d in (typed_item("document", 0, i) for i in range(100)):
        assert f'headed "{d["heading"]}" with {d["n_lines"]} lines' in d["caption"]
        assert " ".join(d["lines"]) == d["text"]
        assert f'beginning "{" ".join(d["text"].split()[:6])}"' in d["caption"]
    assert set(TYPE_SHARDS) < set(DATA_TYPES)


def test_typed_images_are_deterministic_and_show_their_colour(tmp_path):
    for data_type in TYPE_SHARDS:
        write_typed(tmp_path / "a", data_type, 4, size=112, seed=0)
        write_typed(tmp_path / "b", data_type, 4, size=112, seed=0)
        write_typed(tmp_path / "c", data_type, 4, size=112, seed=1)
    a, b, c = _bytes(tmp_path / "a"), _bytes(tmp_path / "b"), _bytes(tmp_path / "c")
    assert a == b and len(a) == 3 * 4 * 3  # jpg, txt, json
    assert a != c
    from PIL import Image

    bars = [i for i in range(60) if typed_item("chart", 0, i)["chart_type"] == "bar"][:2]
    for i in bars:
        write_typed(tmp_path / "bars", "chart", i + 1, size=112)
        labels = read_label_file(tmp_path / "bars" / "charts" / f"chart_{i:06d}.jpg")
        arr = np.asarray(Image.open(tmp_path / "bars" / "charts" / f"chart_{i:06d}.jpg"))
        rgb = np.array([int(CHART_COLOURS[labels["colour"]][k : k + 2], 16) for k in (1, 3, 5)])
        near = (np.abs(arr.astype(int) - rgb).max(-1) < 30).mean()
        assert near > 0.05, (labels["colour"], near)  # the bars are drawn in the named colour
