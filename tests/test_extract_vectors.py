"""extract_vectors end to end on the real `mini` parts (random connector): layout, contents,
resume after SIGKILL with byte-identical chunks, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.data.images import list_images, load_image
from src.data.paths import chunk_path, vector_shard_dir
from src.data.vectors import check_aligned, iter_chunks, load_chunk
from src.extract import extract_vectors
from tests.conftest import write_noise_images

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, out: Path, connector: Path, *extra: str) -> int:
    return extract_vectors.main(
        [
            "--root", str(root), "--out_dir", str(out), "--models", "mini",
            "--model_id", f"mini={connector}", "--batch_size", "2", "--save_every", "4",
            "--num_workers", "0", "--no_progress", *extra,
        ]
    )  # fmt: skip


def test_layout_contents_and_manifest(noise_root, tmp_path, random_connector_dir, mini_adapter):
    (noise_root / "s0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "vec"
    assert _run(noise_root, out, random_connector_dir) == 0

    shard = vector_shard_dir(out, "mini", "s0")
    # 10 records (9 good + broken) at save_every 4 -> chunks 0, 1, 2
    assert [i for i, _ in iter_chunks(shard, "pre")] == [0, 1, 2]
    keys = []
    for i in range(3):
        pre = load_chunk(chunk_path(shard, "pre", i))
        post = load_chunk(chunk_path(shard, "post", i))
        check_aligned(pre, post, str(shard))
        assert pre.vectors.shape[1] == 1280 and post.vectors.shape[1] == 576
        assert pre.lengths.tolist() == [16] * len(pre.keys) == post.lengths.tolist()
        keys += pre.keys
    assert keys == [f"img_{i:03d}" for i in range(9)]  # sorted order, broken one left out
    # weights_only loading, only plain types inside
    raw = torch.load(chunk_path(shard, "post", 0), weights_only=True)
    assert set(raw) == {"keys", "vectors", "lengths", "skipped", "notes"}

    manifest = json.loads((shard / "manifest.json").read_text())
    assert manifest["n_images"] == 10 and manifest["n_ok"] == 9 and manifest["n_skipped"] == 1
    assert manifest["skipped"][0].startswith("broken: ")
    assert manifest["model"] == "mini" and manifest["model_info"]["hook_point"] == "connector"
    assert manifest["shapes"]["pre"]["dim"] == 1280

    # The stored vectors are the model's: E_pre from the tower, E_post = connector(E_pre).
    rec = next(r for r in list_images(noise_root, "s0") if r.key == "img_005")
    inputs = mini_adapter.preprocessor([load_image(rec).image])
    want = mini_adapter.encode(inputs)
    pre_items = {k: t for _, c in iter_chunks(shard, "pre") for k, t in c.by_key().items()}
    post_items = {k: t for _, c in iter_chunks(shard, "post") for k, t in c.by_key().items()}
    torch.testing.assert_close(pre_items["img_005"], want.pre[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(post_items["img_005"], want.post[0], rtol=1e-4, atol=1e-5)


def test_rerun_with_skip_existing_loads_nothing(
    noise_root, tmp_path, random_connector_dir, monkeypatch
):
    out = tmp_path / "vec"
    assert _run(noise_root, out, random_connector_dir) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}

    def no_load(*a, **k):
        raise AssertionError("model loaded although every shard is complete")

    monkeypatch.setattr(extract_vectors, "load_adapter", no_load)
    assert _run(noise_root, out, random_connector_dir, "--skip_existing") == 0
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}


def test_kill_and_resume_gives_identical_bytes(tmp_path, random_connector_dir):
    root = tmp_path / "images"
    write_noise_images(root / "s0", 48, seed=3)
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert _run(root, ref, random_connector_dir) == 0

    cmd = [
        sys.executable, "-m", "src.extract.extract_vectors", "--root", str(root),
        "--out_dir", str(resumed), "--model_id", f"mini={random_connector_dir}",
        "--batch_size", "2", "--save_every", "4", "--num_workers", "0", "--no_progress",
    ]  # fmt: skip
    shard = vector_shard_dir(resumed, "mini", "s0")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not chunk_path(shard, "post", 2).exists():
        assert proc.poll() is None, "extraction ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (shard / "manifest.json").exists(), "the run finished before the kill"

    assert _run(root, resumed, random_connector_dir, "--skip_existing") == 0
    ref_shard = vector_shard_dir(ref, "mini", "s0")
    ref_files = sorted(p.name for p in ref_shard.glob("*_vectors_*.pt"))
    assert ref_files == sorted(p.name for p in shard.glob("*_vectors_*.pt"))
    assert len(ref_files) == 24
    for name in ref_files:
        assert (ref_shard / name).read_bytes() == (shard / name).read_bytes(), name
    assert not list(shard.glob("*.tmp"))


def test_resume_refuses_output_of_another_model(noise_root, tmp_path, random_connector_dir, capsys):
    out = tmp_path / "vec"
    assert _run(noise_root, out, random_connector_dir, "--shards", "s1") == 0
    other = tmp_path / "other_connector"
    other.mkdir()
    for f in random_connector_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    assert _run(noise_root, out, other, "--shards", "s1", "--skip_existing") == 2
    assert "holds output for model_id" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "nosuchmodel"], "unknown model"),
        (["--shards", "nope"], "not found"),
    ],
)
def test_bad_arguments_fail_clearly(
    noise_root, tmp_path, random_connector_dir, capsys, extra, message
):
    assert _run(noise_root, tmp_path / "v", random_connector_dir, *extra) == 2
    assert message in capsys.readouterr().err


def test_empty_shard_gets_a_manifest(tmp_path, random_connector_dir):
    root = tmp_path / "images"
    (root / "empty").mkdir(parents=True)
    write_noise_images(root / "full", 2)
    assert _run(root, tmp_path / "v", random_connector_dir) == 0
    manifest = json.loads((tmp_path / "v" / "mini" / "empty" / "manifest.json").read_text())
    assert manifest["n_images"] == 0 and manifest["n_ok"] == 0


def test_dangling_link_and_bad_caption_reach_the_manifest(tmp_path, random_connector_dir):
    root = tmp_path / "images"
    write_noise_images(root / "s0", 2)
    (root / "s0" / "img_001.txt").write_bytes(b"noise \xff picture\n")  # not UTF-8
    (root / "s0" / "img_002.jpg").symlink_to("deleted.jpg")
    assert _run(root, tmp_path / "v", random_connector_dir) == 0
    manifest = json.loads((tmp_path / "v" / "mini" / "s0" / "manifest.json").read_text())
    assert manifest["n_images"] == 3 and manifest["n_ok"] == 2
    assert manifest["skipped"] == ["img_002: dangling symlink -> deleted.jpg"]
    assert any(n.startswith("img_001: caption file ") and "0xff" in n for n in manifest["notes"])
