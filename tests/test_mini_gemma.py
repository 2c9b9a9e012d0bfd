"""The offline VLMs: `mini-gemma` (EfficientNet-Lite0 -> MLP -> Gemma 3 270M) is registered like
`mini` and found again from its vectors' manifests; each committed VLM captions held-out scenes
with what they show; the main job's plan studies both, with the craft-vgg16 reference; scoring
takes each model's NLL under that model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src import pipeline
from src.data.io import local_path, portable
from src.data.paths import vector_shard_dir
from src.data.sample import COLOURS, SHAPES, make_scene, render_scene
from src.data.vectors import iter_chunks
from src.extract import extract_vectors
from src.metrics.captions import first_mention
from src.models import MODEL_NAMES, adapter_class, load_adapter, load_for_vectors
from src.models.connector import CONFIG_NAME
from src.models.mini import MiniAdapter, MiniGemmaAdapter
from src.models.scoring import Scorers, ScoringConfig
from src.models.towers import GEMMA3
from tests.conftest import write_noise_images

HELD_OUT_SEED = 7  # the sample study's scenes are drawn with seed 0
N_SCENES = 16


@pytest.fixture(scope="module")
def scenes() -> tuple[list, list]:
    """Held-out synthetic scenes from the sample's own generator, and their images."""
    drawn = [make_scene(np.random.default_rng([HELD_OUT_SEED, i])) for i in range(N_SCENES)]
    return drawn, [render_scene(s) for s in drawn]


def test_mini_gemma_is_registered_with_its_committed_weights():
    assert "mini-gemma" in MODEL_NAMES
    cls = adapter_class("mini-gemma")
    assert cls is MiniGemmaAdapter and issubclass(cls, MiniAdapter) and cls.name == "mini-gemma"
    folder = local_path(cls.default_model_id)
    assert folder.name == "mini-gemma" and folder != local_path(MiniAdapter.default_model_id)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    assert (cfg["vision"], cfg["lm"], cfg["grid"]) == ("efficientnet-lite0", GEMMA3, 4)
    assert (cfg["in_dim"], cfg["out_dim"]) == (1280, 640)
    training = cfg["training"]
    assert "src.train.train_connector" in training["command"]
    held = training["heldout"]
    for attr in ("colour", "shape"):  # it learned something: above both chance levels
        assert held[attr]["accuracy"] > held[attr]["majority_baseline"] + 0.1
        assert held[attr]["accuracy"] > held[attr]["uniform_chance"] + 0.1


@pytest.mark.parametrize("name", ["mini", "mini-gemma"])
def test_committed_vlm_captions_held_out_scenes(name, scenes):
    """Greedy captions of scenes no connector trained on name the first object's colour or shape
    (the held-out measure train_connector reports) for most of them, in a real sentence."""
    drawn, images = scenes
    adapter = load_adapter(name)
    with torch.no_grad():
        captions = adapter.generate(adapter.preprocessor(images), max_new_tokens=24)
    hits = 0
    for scene, caption in zip(drawn, captions, strict=True):
        assert len(caption.split()) >= 3, caption  # a caption, not a token or nothing
        said = first_mention(caption, list(COLOURS)), first_mention(caption, SHAPES)
        assert said != (None, None), caption  # it speaks of colours or shapes at all
        first = scene.objects[0]
        hits += said[0] == first.colour or said[1] == first.shape
    # it looks at the image: a connector the LM ignores writes one caption for every scene
    assert len(set(captions)) >= N_SCENES // 2, captions
    # held-out rate ~0.8 (colour 65-68%, shape 67-70%); one fixed caption would score ~0.4
    assert hits >= 10, (hits, captions)


def test_mini_gemma_nll_from_cached_prefixes_equals_its_caption_loss(scenes):
    """The NLL score continues Gemma from cached image prefixes (its sliding-window layers
    included): equal to the plain caption loss, also for rows paired with other images."""
    adapter = load_adapter("mini-gemma")
    captions = ["a small red circle at the top.", "two blue stars", "a large green square."]
    with torch.no_grad():
        post = torch.stack(adapter.encode(adapter.preprocessor(scenes[1][:3])).post)
        states = adapter.model.prefix_states(post)
        for rows in ([0, 1, 2], [2, 0, 0]):
            want = adapter.model.caption_loss(post[rows], captions)
            got = adapter.model.caption_nll(states, rows, captions)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_mini_gemma_vectors_find_their_model_again(tmp_path):
    """extract_vectors --models mini-gemma records the identity load_for_vectors rebuilds."""
    root, out = tmp_path / "images", tmp_path / "vec"
    write_noise_images(root / "s", 2)
    argv = ["--root", str(root), "--out_dir", str(out), "--models", "mini-gemma",
            "--num_workers", "0", "--no_progress"]  # fmt: skip
    assert extract_vectors.main(argv) == 0
    manifest = json.loads((vector_shard_dir(out, "mini-gemma", "s") / "manifest.json").read_text())
    assert manifest["model"] == "mini-gemma"
    assert manifest["model_id"] == MiniGemmaAdapter.default_model_id
    adapter, ident = load_for_vectors(out / "mini-gemma")
    assert isinstance(adapter, MiniGemmaAdapter) and ident["model"] == "mini-gemma"
    assert adapter.model.lm.config.hidden_size == 640
    _, chunk = next(iter_chunks(vector_shard_dir(out, "mini-gemma", "s"), "post"))
    assert chunk.items()[0].shape == (16, 640)
    # asking for the other VLM is refused: the vectors name theirs
    with pytest.raises(Exception, match="mini"):
        load_for_vectors(out / "mini-gemma", model="mini")


def test_scoring_takes_each_models_nll_under_that_model(tmp_path):
    cfg = ScoringConfig(nll_vec_root=tmp_path / "vector")
    scorers = Scorers(bert=None, clip=None, cfg=cfg)  # type: ignore[arg-type]
    assert scorers.nll_vec_dir("mini-gemma") == tmp_path / "vector" / "mini-gemma"
    assert scorers.nll_vec_dir("mini") == tmp_path / "vector" / "mini"
    assert scorers.nll_vec_dir("llava") is None  # no stored-E_post NLL for a hub VLM
    one = Scorers(bert=None, clip=None, cfg=ScoringConfig(nll_vec_dir=Path("v/mini")))  # type: ignore[arg-type]
    assert one.nll_vec_dir("mini-gemma") == Path("v/mini")  # --nll_vec_dir: one judge for all


def test_main_job_plans_both_vlms_and_the_craft_reference():
    args = pipeline.get_args_parser().parse_args(["--data", "d", "--results", "r"])
    steps = {title: argv for title, _, argv in pipeline.plan(args)}
    assert steps["E_pre / E_post"][steps["E_pre / E_post"].index("--models") + 1] == (
        "mini,mini-gemma"
    )
    craft = steps["reference craft-vgg16"]
    assert craft[craft.index("--model_id") + 1] == "craft-vgg16"
    for model in ("mini", "mini-gemma"):
        geometry = steps[f"geometry {model}"]
        refs = [geometry[i + 1] for i, a in enumerate(geometry) if a == "--ref"]
        assert f"craft-vgg16:{Path('d') / 'clip_ref' / 'craft-vgg16'}" in refs
        assert f"minilm:{Path('d') / 'clip_ref' / 'minilm'}" in refs
        for kind in ("captions post vs reconstruction", "perturb mask", "perturb lowrank"):
            assert f"{kind} {model}" in steps
        nll = steps[f"score captions {model}"]  # the stage picks <root>/<model>: see below
        assert nll[nll.index("--nll_vec_root") + 1] == str(Path("d") / "vector")
    # the second model gets the smaller counts (its share of the main job's time)
    caps = steps["captions post vs reconstruction mini-gemma"]
    assert caps[caps.index("--shard_limit") + 1] == str(args.caption_n_others)
    pert = steps["perturb mask mini-gemma"]
    assert pert[pert.index("--limit") + 1] == str(args.perturb_n_others)
    assert steps["captions post vs reconstruction mini"][
        steps["captions post vs reconstruction mini"].index("--shard_limit") + 1
    ] == str(args.caption_n)
    score = steps["score perturbations"]
    assert score[score.index("--nll_vec_root") + 1] == str(Path("d") / "vector")
    # --refs replaces the default list
    args = pipeline.get_args_parser().parse_args(["--refs", "minilm", "--models", "mini"])
    titles = [t for t, _, _ in pipeline.plan(args)]
    assert "reference minilm" in titles and "reference craft-vgg16" not in titles
    assert not any("mini-gemma" in t for t in titles)
    assert portable(local_path(MiniGemmaAdapter.default_model_id)) == (
        MiniGemmaAdapter.default_model_id
    )
