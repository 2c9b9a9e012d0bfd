"""The stage contract: one declaration per stage read by the stage, the pipeline and the
launcher; identity from manifests; one error path; paths that survive a moved checkout."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from src import launch
from src.cli import add_fields, from_args
from src.data.io import REPO_ROOT, local_path, portable, read_manifest
from src.eval import eval_captions
from src.extract import extract_vectors
from src.stage import overlaps

STAGE_MODULES = [m for m, _ in launch.stage_modules()]


def test_every_stage_module_declares_itself_and_main_is_thin():
    import ast
    import importlib

    in_folders = {
        f"src.{folder}.{p.stem}"
        for folder in launch.STAGE_FOLDERS
        for p in (REPO_ROOT / "src" / folder).glob("*.py")
        if p.stem not in ("__init__", "common")
    }
    assert set(STAGE_MODULES) == in_folders  # every module of a stage folder is a stage
    for module in STAGE_MODULES:
        stage = importlib.import_module(module).STAGE
        assert stage.module == module and stage.name == module.rsplit(".", 1)[-1]
        tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            if fn.name in ("main", "run"):
                lines = fn.end_lineno - fn.lineno + 1
                assert lines <= 42, f"{module}.{fn.name} is {lines} lines"


def test_launcher_reads_the_plan_without_plotting_or_model_code(tmp_path):
    code = (
        "import sys\n"
        "from src import launch, pipeline\n"
        f"steps = launch.load_steps('pipeline', ['--data', {str(tmp_path)!r}])\n"
        "from src.jobs import stage_of\n"
        "[stage_of(m) for _, m, _ in steps]\n"
        "bad = [m for m in ('matplotlib', 'transformers', 'src.reporting.figures') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_dry_run_orders_steps_by_what_they_read(tmp_path, capsys):
    study = [
        "--data",
        str(tmp_path / "d"),
        "--results",
        str(tmp_path / "r"),
        "--figures",
        str(tmp_path / "f"),
    ]  # nothing of the checkout's own results/
    assert launch.main(["--dry_run", "--log_dir", str(tmp_path / "logs"), "pipeline",
                        *study]) == 0  # fmt: skip
    lines = {
        line.split(":")[0].removeprefix("== "): line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("== ")
    }
    assert lines["sample data"].endswith("depends on nothing")
    # references and vectors read only the images: they run side by side
    refs = ("craft-vgg16", "efficientnet-lite0", "minilm")
    for step in ("E_pre / E_post", *(f"reference {r}" for r in refs)):
        assert lines[step].endswith("after <sample data>"), lines[step]
    for model in ("mini", "mini-gemma"):
        assert (
            "after <E_pre / E_post>, " + ", ".join(f"<reference {r}>" for r in refs)
            in (lines[f"geometry {model}"])
        )
    # captions need the vectors, the images and the reconstructor, not the geometry
    cap = lines["captions post vs reconstruction mini"]
    assert "<reconstructor mini>" in cap and "geometry" not in cap


def test_overlaps():
    assert overlaps(Path("data/vector"), Path("data/vector/mini/s0"))
    assert overlaps(Path("data/vector/mini"), Path("data/vector"))
    assert not overlaps(Path("data/vector/mini"), Path("data/vector_recon/mini"))


def test_manifest_paths_are_portable(tmp_path, monkeypatch):
    inside = REPO_ROOT / "src" / "models" / "weights" / "mini"
    assert portable(inside) == "<repo>/src/models/weights/mini"
    assert local_path(portable(inside)) == inside
    assert portable("org/model") == "org/model"  # a hub id stays as it is
    monkeypatch.chdir(tmp_path)
    assert portable(tmp_path / "data" / "x") == "data/x"
    assert portable(Path("/elsewhere/models/llava")) == "/elsewhere/models/llava"


@pytest.fixture
def vectors(noise_root, tmp_path, random_connector_dir):
    out = tmp_path / "vector"
    assert extract_vectors.main(["--root", str(noise_root), "--out_dir", str(out),
                                 "--model_id", f"mini={random_connector_dir}",
                                 "--num_workers", "0", "--no_progress"]) == 0  # fmt: skip
    return out / "mini"


def captions(vectors, noise_root, tmp_path, *extra):
    return eval_captions.main(["--vec_dir", str(vectors), "--image_dir", str(noise_root),
                               "--out_dir", str(tmp_path / "captions"), "--shard_limit", "2",
                               "--max_new_tokens", "3", "--no_progress", *extra])  # fmt: skip


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_captions_take_the_model_from_the_vectors_manifest(
    vectors, noise_root, tmp_path, random_connector_dir, capsys
):
    other = REPO_ROOT / "src" / "models" / "weights" / "mini"
    assert captions(vectors, noise_root, tmp_path, "--vlm_id", str(other)) == 2
    [line] = error_lines(capsys)
    assert "--vlm_id" in line and str(random_connector_dir) in line and "--override_model" in line
    assert captions(vectors, noise_root, tmp_path) == 0  # no flag: the manifest's model
    made = read_manifest(tmp_path / "captions")
    assert made["upstream"]["model_id"] == str(random_connector_dir)
    assert made["upstream"]["hook_point"] == "connector"


def test_a_user_error_half_way_through_a_shard_is_one_line(vectors, noise_root, tmp_path, capsys):
    (noise_root / "s1" / "img_001.jpg").unlink()  # vectors exist, the image is gone
    assert captions(vectors, noise_root, tmp_path, "--shards", "s0,s1") == 2
    [line] = error_lines(capsys)
    assert "img_001" in line and "--image_dir" in line
    assert (tmp_path / "captions" / "s0.csv").exists()  # the shard before it is kept


def test_programming_errors_keep_their_traceback(vectors, noise_root, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(eval_captions, "caption_shard", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        captions(vectors, noise_root, tmp_path)


@dataclass
class Toy:
    epochs: int = field(default=3, metadata={"help": "passes"})
    lr: float = field(default=1e-3, metadata={"help": "step size"})
    name: str | None = field(default=None, metadata={"help": "a name"})
    kind: Literal["mlp", "transformer"] = field(default="mlp", metadata={"help": "family"})
    shards: list[str] = field(default_factory=list, metadata={"help": "comma-separated"})
    levels: list[float] = field(default_factory=list, metadata={"help": "levels", "nargs": "+"})
    out: Path = field(default=Path("x"), metadata={"help": "where"})
    fresh: bool = field(default=False, metadata={"help": "start again"})


def test_flags_come_from_dataclass_fields():
    p = argparse.ArgumentParser()
    add_fields(p, Toy)
    args = p.parse_args(["--epochs", "5", "--shards", "a,b", "--levels", "0.5", "1",
                         "--kind", "transformer", "--fresh", "--out", "y"])  # fmt: skip
    assert from_args(Toy, args) == Toy(5, 1e-3, None, "transformer", ["a", "b"], [0.5, 1.0],
                                       Path("y"), True)  # fmt: skip
    assert from_args(Toy, p.parse_args([])) == Toy()
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "rnn"])
    assert "passes" in p.format_help()
