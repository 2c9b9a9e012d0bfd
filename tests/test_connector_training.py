"""Connector training: the caption loss is the LM's own loss, schedules, resume == uninterrupted."""

from __future__ import annotations

import pytest
import torch

from src.errors import UserError
from src.metrics.captions import attribute_accuracy, first_mention, majority_baseline
from src.models.connector import (
    WEIGHTS_NAME,
    ConnectorConfig,
    MLPConnector,
    load_connector,
    save_connector,
)
from src.models.connector_fit import TrainConfig, batch_indices, lr_at, train_connector


def test_caption_loss_equals_lm_loss_on_token_ids(mini_adapter):
    """Feed real token embeddings as the 'image': the loss must equal the LM's own loss over the
    same token sequence with the prompt masked out."""
    model = mini_adapter.model
    tok = model.tokenizer
    image_text = tok("a photo of a cat", add_special_tokens=False)["input_ids"]
    caption = "a small cat on a mat"
    with torch.no_grad():
        post = model.lm.get_input_embeddings()(torch.tensor([image_text]))  # (1, T, 576)
        ours = model.caption_loss(post, [caption], "Describe the image.")
        before, after = model._prompt_ids("Describe the image.")
        cap = tok(caption, add_special_tokens=False)["input_ids"] + [model.eos_id]
        ids = torch.tensor([before.tolist() + image_text + after.tolist() + cap])
        labels = ids.clone()
        labels[0, : ids.shape[1] - len(cap)] = -100
        want = model.lm(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(ours[0], want, rtol=1e-4, atol=1e-4)


def test_caption_loss_pads_per_caption(mini_adapter):
    """A batch of captions of different lengths gives each its own unpadded loss."""
    model = mini_adapter.model
    torch.manual_seed(0)
    post = torch.randn(2, 16, 576) * 0.05
    with torch.no_grad():
        both = model.caption_loss(post, ["a red circle", "two large blue squares at the top"])
        one = model.caption_loss(post[:1], ["a red circle"])
        two = model.caption_loss(post[1:], ["two large blue squares at the top"])
    torch.testing.assert_close(both, torch.cat([one, two]), rtol=1e-4, atol=1e-4)


def test_lr_schedule_and_batches_are_pure_functions():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=1e-2)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))
    assert batch_indices(50, 7, cfg) == batch_indices(50, 7, cfg)
    assert batch_indices(50, 7, cfg) != batch_indices(50, 8, cfg)
    assert len(set(batch_indices(50, 7, cfg))) == cfg.batch_size


@pytest.fixture
def model(mini_adapter):
    """The session's mini model; a test may swap its connector, it gets the original back."""
    original = mini_adapter.model.connector
    yield mini_adapter.model
    mini_adapter.model.connector = original


def test_resume_equals_uninterrupted(model, tmp_path):
    torch.manual_seed(0)
    feats = torch.randn(6, 16, 1280)
    caps = [[f"a {c} square"] for c in ("red", "green", "blue", "yellow", "red", "blue")]
    cfg = TrainConfig(steps=4, batch_size=2, warmup=1, checkpoint_every=2)
    start = MLPConnector(ConnectorConfig(in_dim=1280, out_dim=576, hidden_dim=32))
    init = {k: v.clone() for k, v in start.state_dict().items()}

    def fresh() -> MLPConnector:
        c = MLPConnector(start.config)
        c.load_state_dict(init)
        return c

    model.connector = fresh()
    straight = train_connector(
        model, feats, caps, cfg, checkpoint=tmp_path / "a.pt", progress=False
    )
    want = {k: v.clone() for k, v in model.connector.state_dict().items()}

    class Killed(Exception):
        pass

    def kill_at_2(step: int) -> None:
        if step == 2:
            raise Killed

    model.connector = fresh()
    with pytest.raises(Killed):
        train_connector(
            model,
            feats,
            caps,
            cfg,
            checkpoint=tmp_path / "b.pt",
            progress=False,
            on_checkpoint=kill_at_2,
        )
    model.connector = fresh()  # a new process starts from scratch weights, then loads the ckpt
    resumed = train_connector(model, feats, caps, cfg, checkpoint=tmp_path / "b.pt", progress=False)
    assert resumed == straight
    for k, v in model.connector.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert straight[-1] < straight[0] * 1.5  # it trains (loose: 4 tiny steps)


def test_connector_roundtrip_and_wrong_checkpoint(tmp_path):
    c = MLPConnector(ConnectorConfig(in_dim=8, out_dim=4, hidden_dim=6, num_layers=3))
    save_connector(c, tmp_path / "c")
    back = load_connector(tmp_path / "c")
    x = torch.randn(3, 8)
    torch.testing.assert_close(back(x), c(x))
    other = MLPConnector(ConnectorConfig(in_dim=8, out_dim=5, hidden_dim=6))
    save_connector(other, tmp_path / "d")
    (tmp_path / "c" / "connector.safetensors").write_bytes(
        (tmp_path / "d" / "connector.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="does not match"):
        load_connector(tmp_path / "c")
    with pytest.raises(UserError, match="not a connector folder"):
        load_connector(tmp_path)


def test_connector_for_another_lm_is_refused(tmp_path):
    from src.models import load_adapter

    c = MLPConnector(ConnectorConfig(in_dim=1280, out_dim=640, hidden_dim=8))
    save_connector(c, tmp_path / "c")
    with pytest.raises(ValueError, match="trained for another LM"):
        load_adapter("mini", str(tmp_path / "c"))


def test_caption_attribute_metrics():
    colours, shapes = ["red", "green", "blue"], ["circle", "square"]
    assert first_mention("Two green squares and a red circle", colours) == "green"
    assert first_mention("two green squares", shapes) == "square"
    assert first_mention("nothing here", colours) is None
    assert first_mention("a reddish thing", colours) is None  # whole words only
    caps = ["a red circle", "a blue square", "a green circle", "something else"]
    assert attribute_accuracy(caps, ["red", "blue", "blue", "red"], colours) == 0.5
    assert majority_baseline(["red", "red", "blue"], ["red", "blue"]) == ("red", 0.5)


def test_mini_connect_equals_encode(mini_adapter):
    from PIL import Image

    inputs = mini_adapter.preprocessor([Image.new("RGB", (50, 40), (200, 10, 10))])
    out = mini_adapter.encode(inputs)
    torch.testing.assert_close(mini_adapter.connect(inputs, out.pre)[0], out.post[0])


@pytest.fixture
def tiny_towers(tmp_path):
    """A hub-style vision tower and LM saved as folders (tiny random CLIP and Llama), and an
    image root with a training shard and a held-out one."""
    import transformers as tf

    from tests.conftest import write_noise_images
    from tests.tiny_vlms import TEXT, tokenizer

    torch.manual_seed(0)
    vision_dir, lm_dir = tmp_path / "clip", tmp_path / "lm"
    clip = tf.CLIPModel(tf.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=50),
        vision_config=dict(hidden_size=24, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=7),
        projection_dim=8))  # fmt: skip
    clip.save_pretrained(vision_dir)
    tf.CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(vision_dir)
    tok = tokenizer(["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), **TEXT)).save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    root = tmp_path / "images"
    write_noise_images(root / "train", 6)
    write_noise_images(root / "held", 2, seed=5)
    return ["--root", str(root), "--vision", str(vision_dir), "--lm", str(lm_dir),
            "--batch_size", "2", "--warmup", "1", "--no_progress"]  # fmt: skip


def test_train_connector_for_another_encoder_and_lm(tmp_path, tiny_towers):
    """train_connector with a hub-style vision tower and LM given by path: it trains, saves,
    and the saved folder loads as a working `mini`-style VLM."""
    import json

    from src.models import load_adapter
    from src.train import train_connector
    from tests.tiny_vlms import TEXT

    out = tmp_path / "connector"
    assert train_connector.main([
        *tiny_towers, "--eval_shards", "held", "--steps", "3", "--out_dir", str(out),
        "--work_dir", str(tmp_path / "work"),
    ]) == 0  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["in_dim"], cfg["out_dim"]) == (24, TEXT["hidden_size"])
    assert cfg["vision"] == str(tmp_path / "clip") and cfg["lm"] == str(tmp_path / "lm")
    assert cfg["training"]["n_train"] == 6
    command = cfg["training"]["command"]
    assert command.startswith("python -m src.train.train_connector ") and "--steps 3" in command
    assert train_connector.STAGE.parse(command.split()[3:]).out_dir == out  # it reproduces
    adapter = load_adapter("mini", str(out))
    from PIL import Image

    inputs = adapter.preprocessor([Image.new("RGB", (40, 30), (0, 90, 200))], "describe")
    enc = adapter.encode(inputs)
    assert enc.pre[0].shape == (17, 24) and enc.post[0].shape == (17, TEXT["hidden_size"])
    assert isinstance(adapter.generate(inputs, max_new_tokens=3)[0], str)


def test_default_out_dir_is_not_the_committed_weights(tmp_path, tiny_towers, monkeypatch, capsys):
    """Without --out_dir the connector goes to data/connector/<name>; the committed mini weights
    are untouched. The recorded command for them names them explicitly, and still parses."""
    import hashlib
    import json
    import shlex

    from src.data.io import REPO_ROOT
    from src.models.mini import DEFAULT_CONNECTOR_DIR
    from src.stage import overlaps
    from src.train import train_connector

    stage = train_connector.STAGE
    weights = DEFAULT_CONNECTOR_DIR.parent
    assert not any(overlaps(p, weights) for p in stage.outputs(stage.parse([])))
    recorded = json.loads((DEFAULT_CONNECTOR_DIR / "config.json").read_text())["training"]
    args = stage.parse(shlex.split(recorded["command"])[3:])
    assert (REPO_ROOT / args.out_dir).resolve() == DEFAULT_CONNECTOR_DIR.resolve()

    def digest() -> str:
        return hashlib.sha256((DEFAULT_CONNECTOR_DIR / WEIGHTS_NAME).read_bytes()).hexdigest()

    before = digest()
    monkeypatch.chdir(tmp_path)
    assert train_connector.main([*tiny_towers, "--steps", "2"]) == 0
    assert (tmp_path / "data" / "connector" / "mini" / "connector.safetensors").exists()
    assert (tmp_path / "data" / "train_connector" / "mini" / "manifest.json").exists()
    assert digest() == before
    # finished: --skip_existing does nothing; other settings do not resume that checkpoint
    capsys.readouterr()
    assert train_connector.main([*tiny_towers, "--steps", "2", "--skip_existing"]) == 0
    assert "complete, nothing to do" in capsys.readouterr().out
    assert train_connector.main([*tiny_towers, "--steps", "4", "--lr", "5e-3"]) == 2
    err = capsys.readouterr().err  # transformers' loading bars go to stderr too
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "train.steps, train.lr" in errors[0] and "pass --fresh" in errors[0]
    assert train_connector.main([*tiny_towers, "--steps", "4", "--lr", "5e-3", "--fresh"]) == 0
