"""train_align (seed E phase 1) and eval_probe: the adapters' training (temperature, no output
dropout, resume == uninterrupted), the stages end to end on a tiny captioned root with a
corrupt and an uncaptioned image, the dual encoder's loader, and its use as a connector tower
with prefix tokens (seed E phase 2)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from src.data.sample import write_scenes
from src.models.align_fit import AlignTrain, PairData, train_adapters
from src.models.dual_encoder import DualAdapters, DualEncoderConfig, load_dual_encoder


def _pairs(n: int, seed: int) -> PairData:
    """n images with 1 or 2 captions each, text = a noisy linear map of the image."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, 12, generator=g)
    owner = torch.tensor([i for i in range(n) for _ in range(1 + i % 2)])
    text = img[owner, :8] + 0.1 * torch.randn(len(owner), 8, generator=g)
    return PairData(img, text, owner)


def _config(**kw) -> DualEncoderConfig:
    base = dict(d_vision=12, d_text=8, d_align=16, hidden_dim=32, radii=[4, 8, 16])
    return DualEncoderConfig(**{**base, **kw})


def test_adapter_output_has_no_dropout():
    adapters = DualAdapters(_config(dropout=0.5)).train()
    for side in (adapters.image, adapters.text):
        assert isinstance(side.net[-1], torch.nn.Linear)  # the output is never masked
        assert any(isinstance(m, torch.nn.Dropout) for m in side.net)  # inside only


def test_temperature_trains_unless_fixed(tmp_path):
    cfg = AlignTrain(epochs=3, batch_size=8, lr=1e-2)
    learnt = train_adapters(_config(), _pairs(24, 0), _pairs(8, 1), cfg, work_dir=tmp_path / "a",
                            progress=False)  # fmt: skip
    scales = [h["logit_scale"] for h in learnt.history]
    assert scales[-1] != pytest.approx(1 / 0.07, abs=1e-3)
    fixed = train_adapters(_config(fixed_temperature=True), _pairs(24, 0), _pairs(8, 1), cfg,
                           work_dir=tmp_path / "b", progress=False)  # fmt: skip
    assert all(h["logit_scale"] == pytest.approx(1 / 0.07) for h in fixed.history)
    assert DualAdapters(_config(logit_scale=1000.0)).scale() == 100.0  # CLIP's clamp


def test_resume_equals_uninterrupted(tmp_path):
    cfg = AlignTrain(epochs=4, batch_size=8, lr=5e-3)
    train, val = _pairs(24, 0), _pairs(8, 1)
    whole = train_adapters(_config(), train, val, cfg, work_dir=tmp_path / "whole", progress=False)
    part = AlignTrain(**{**cfg.__dict__, "stop_after": 2})
    first = train_adapters(_config(), train, val, part, work_dir=tmp_path / "cut", progress=False)
    assert not first.finished and len(first.history) == 2
    rest = train_adapters(_config(), train, val, cfg, work_dir=tmp_path / "cut", progress=False)
    assert rest.finished and rest.history == whole.history and rest.best_epoch == whole.best_epoch
    for k, v in whole.adapters.state_dict().items():
        assert torch.equal(v, rest.adapters.state_dict()[k]), k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny captioned root (two scene shards, a corrupt image, an uncaptioned one) and the
    dual encoder train_align made from it."""
    from src.train import train_align

    base = tmp_path_factory.mktemp("align")
    root = base / "images"
    write_scenes(root, n=60, n_shards=2, size=64)
    (root / "synth_00" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "synth_00" / "broken.txt").write_text("a broken file\n")
    (root / "synth_01" / "scene_000059.txt").unlink()  # no caption
    (root / "synth_01" / "scene_000058.txt").write_text("a first caption.\na second caption.\n")
    out, results = base / "dual", base / "results"
    argv = ["--root", str(root), "--out_dir", str(out), "--results", str(results),
            "--d_align", "32", "--hidden_dim", "64", "--radii", "8,16,32", "--epochs", "6",
            "--batch_size", "16", "--val_fraction", "0.2", "--test_fraction", "0.3",
            "--n_boot", "50", "--no_progress"]  # fmt: skip
    assert train_align.main(argv) == 0
    return root, out, results, argv


def test_train_align_outputs_and_reports_skipped_files(trained):
    _, out, results, argv = trained
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"broken.jpg", "scene_000059.jpg"}
    assert "caption" in reasons["scene_000059.jpg"]
    config = json.loads((out / "dual_encoder.json").read_text())
    assert config["radius_weights"] == pytest.approx([1 / 3] * 3)
    assert config["training"]["data"]["n_captions"] == 59 + 1  # scene 58 has two lines
    table = pd.read_csv(results / "contrastive" / "efficientnet-lite0_minilm" / "retrieval.csv")
    assert set(table.radius) == {8, 16, 32}
    assert set(table.direction) == {"image_to_text", "text_to_image"}
    assert set(table.metric) == {"R@1", "R@5", "R@10", "MRR"}
    assert (table.ci_low <= table.value).all() and (table.value <= table.ci_high).all()
    n_test = config["training"]["data"]["split"]["test"]["images"]
    r1 = table[(table.metric == "R@1") & (table.direction == "text_to_image")]
    assert r1.chance.iloc[0] == pytest.approx(1 / n_test)
    from src.train import train_align

    assert train_align.main([*argv, "--skip_existing"]) == 0  # finished: nothing to do


def test_dual_encoder_loader_and_align_score(trained):
    from PIL import Image

    root, out, _, _ = trained
    dual = load_dual_encoder(out)
    text = dual.encode_text(["a large red circle.", "a small blue star."])
    assert text.shape == (2, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    assert dual.encode_text(["a red circle."], radius=8).shape == (1, 8)
    image = Image.open(root / "synth_00" / "scene_000000.jpg")
    pixels = dual.preprocessor([image])["pixel_values"]
    z = dual.encode_image(pixels)
    feats = dual.vision_tower.encode({"pixel_values": pixels}, [])
    torch.testing.assert_close(dual.encode_image(feats), z)
    tokens = dual.encode_image_tokens(feats[:, None].expand(1, 3, -1))  # (1, 3, 32)
    torch.testing.assert_close(tokens[:, 0], z)
    score = dual.align_score(pixels, [(root / "synth_00" / "scene_000000.txt").read_text()])
    assert -1 <= float(score) <= 1
    torch.testing.assert_close(score, (z * dual.encode_text([
        (root / "synth_00" / "scene_000000.txt").read_text()])).sum(-1))  # fmt: skip


def test_eval_probe_tables(trained):
    from src.eval import eval_probe

    root, out, results, _ = trained
    argv = ["--root", str(root), "--vision", f"efficientnet-lite0,{out}", "--text", str(out),
            "--results", str(results), "--cache_dir", str(out.parent / "probe_cache"),
            "--vision_cache", f"efficientnet-lite0={out / 'cache' / 'vision'}",
            "--labels", "colour,shape,size,count,folder", "--val_fraction", "0.2",
            "--test_fraction", "0.3", "--n_boot", "50", "--c_grid", "0.1,10",
            "--no_progress"]  # fmt: skip
    assert eval_probe.main(argv) == 0
    folder = results / "probe" / "probe"
    zs = pd.read_csv(folder / "zero_shot.csv")
    assert {"colour", "shape", "size", "count"} <= set(zs.family)
    colour = zs[(zs.family == "colour") & (zs.metric == "acc@1")].iloc[0]
    assert colour.chance == pytest.approx(1 / colour.n_classes)
    assert "acc@5" in set(zs[zs.family == "colour"].metric)  # 5 colours
    assert "acc@5" not in set(zs[zs.family == "shape"].metric)  # 4 shapes
    lp = pd.read_csv(folder / "linear_probe.csv")
    assert set(lp.model) == {"efficientnet-lite0", str(out)}
    assert set(lp.metric) == {"acc@1", "mean_per_class_recall"}
    rt = pd.read_csv(folder / "retrieval.csv")
    assert set(rt.direction) == {"image_to_text", "text_to_image"}
    assert json.loads((folder / "manifest.json").read_text())["stage"] == "eval_probe"


def test_aligned_encoder_as_connector_tower_with_prefix_tokens(trained, tmp_path):
    """Seed E phase 2: the dual encoder's image side is a tower (one joint-space vector) and
    --prefix_tokens N maps it to N LM tokens; the connector saves and loads as before."""
    from PIL import Image

    from src.models.connector import ConnectorConfig, MLPConnector, load_connector, save_connector
    from src.models.mini import build_vision

    root, out, _, _ = trained
    cfg = ConnectorConfig(vision=str(out), prefix_tokens=8, in_dim=32, out_dim=24, hidden_dim=16)
    tower, transform = build_vision(cfg)
    images = [Image.open(root / "synth_00" / f"scene_00000{i}.jpg") for i in range(2)]
    x = transform(images)
    with torch.no_grad():
        tokens = tower(x)  # (2, 1, 32)
    assert tokens.shape == (2, 1, 32) and tower.dim == 32
    torch.testing.assert_close(tokens[:, 0], load_dual_encoder(out).encode_image(x))
    connector = MLPConnector(cfg)
    assert connector(tokens).shape == (2, 8, 24)
    # several vision tokens are mean-pooled first: the same as their mean as one token
    many = torch.randn(2, 5, 32)
    torch.testing.assert_close(connector(many), connector(many.mean(1, keepdim=True)))
    save_connector(connector, tmp_path / "c")
    again = load_connector(tmp_path / "c")
    torch.testing.assert_close(again(tokens), connector(tokens))
    assert MLPConnector(ConnectorConfig(in_dim=32, out_dim=24, hidden_dim=16))(many).shape == (
        2, 5, 24,
    )  # fmt: skip


def test_connector_trains_on_exactly_what_generation_sees(mini_adapter):
    """train_connector's loss reads the prefix generation starts from (image tokens and the
    prompt, in the LM's layout), then the caption and the end token generation stops on."""
    model = mini_adapter.model
    seen: list[torch.Tensor] = []
    hook = model.lm.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw.get("inputs_embeds")), with_kwargs=True
    )
    torch.manual_seed(0)
    post = torch.randn(1, 16, 576) * 0.05
    prompt, caption = "Describe the image.", "a red circle"
    try:
        with torch.no_grad():
            model.generate(post, prompt, max_new_tokens=2)
            generation_prefix = seen[0]
            seen.clear()
            model.caption_loss(post, [caption], prompt)
            training_input = seen[0]
    finally:
        hook.remove()
    p = generation_prefix.shape[1]
    assert p == 16 + sum(len(t) for t in model._prompt_ids(prompt))  # the prompt is in it
    assert torch.equal(training_input[:, :p], generation_prefix)
    target = model._caption_targets([caption], post.device)[0]
    assert int(target[-1]) == model.eos_id  # the end token is a target
    # the caption follows the prefix directly; its last token (the end) predicts nothing, so it
    # is a target but not an input
    emb = model.lm.get_input_embeddings()(target[:-1])
    assert torch.equal(training_input[0, p:], emb)


def test_text_cache_is_read_when_it_matches_and_never_written(tmp_path, monkeypatch):
    """train_align --text_cache: another dual encoder's caption features are used when they are
    of the same tower and texts; otherwise the tower runs and only this run's own cache is
    written (the other file keeps its bytes)."""
    from src.data.io import save_torch_atomic
    from src.data.pooled import text_features
    from src.models import text_towers

    other, own = tmp_path / "other" / "text_minilm.pt", tmp_path / "own" / "text_minilm.pt"
    saved = torch.randn(2, 4)
    save_torch_atomic(other, {"tower": "minilm", "texts": ["a", "b"], "vectors": saved})
    before = other.read_bytes()

    class Tower:  # counts loads; embeds as a real tower would (one row per text)
        loads = 0

        def __init__(self, *_, **__):
            Tower.loads += 1

        def embed(self, texts):
            return torch.ones(len(texts), 4)

    monkeypatch.setattr(text_towers, "load_text_tower", Tower)
    kw = dict(device=torch.device("cpu"), dtype=torch.float32, reuse=other)
    assert torch.equal(text_features(["a", "b"], "minilm", own, **kw), saved)
    assert Tower.loads == 0 and not own.exists()
    fresh = text_features(["a", "c"], "minilm", own, **kw)  # other texts: computed, own cache
    assert Tower.loads == 1 and torch.equal(fresh, torch.ones(2, 4)) and own.exists()
    assert other.read_bytes() == before
