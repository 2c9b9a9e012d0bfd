"""Tiny randomly initialised VLMs of the real transformers classes, saved with a processor built
locally (word-level tokenizer, PIL image processors), so adapters load them like hub models."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "a the red green blue circle square image describe . , picture of is USER ASSISTANT :"
VISION_HIDDEN = 48  # differs from the text width, so a test can tell E_pre from E_post
TEXT_HIDDEN = 32
TEXT = dict(hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip


def tokenizer(specials: list[str], *, eos: str = "</s>", pad: str = "<pad>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", pad, eos, "<s>"]
    words = WORDS.split() + [f"w{i}" for i in range(60)]
    names = base + [s for s in specials if s not in base] + words
    vocab = {t: i for i, t in enumerate(dict.fromkeys(names))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token=pad, eos_token=eos, bos_token="<s>",
        additional_special_tokens=[s for s in specials if s not in base],
    )  # fmt: skip


def _template(image: str) -> str:
    return (
        "{% for m in messages %}USER: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + image + "{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )


def save_llava(folder: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tok = tokenizer(["<image>"])
    vision = dict(
        hidden_size=VISION_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        projection_dim=16,
    )
    cfg = tf.LlavaConfig(
        vision_config=tf.CLIPVisionConfig(**vision),
        text_config=tf.LlamaConfig(vocab_size=len(tok), **TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    proc = tf.LlavaProcessor(
        image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 28},
                                              crop_size={"height": 28, "width": 28}),
        tokenizer=tok, patch_size=7, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the "default" strategy drops
        chat_template=_template("<image>"),
    )  # fmt: skip
    _save(model, proc, folder)


def save_idefics2(folder: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    specials = ["<image>", "<fake_token_around_image>", "<end_of_utterance>"]
    tok = tokenizer(specials)
    cfg = tf.Idefics2Config(
        vision_config=dict(hidden_size=VISION_HIDDEN, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=28, patch_size=7),
        perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1,
                              resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
        text_config=dict(model_type="mistral", vocab_size=len(tok), **TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    model = tf.Idefics2ForConditionalGeneration(cfg).eval()
    improc = tf.Idefics2ImageProcessor(
        do_image_splitting=True, size={"longest_edge": 28, "shortest_edge": 14}
    )
    proc = tf.Idefics2Processor(
        image_processor=improc, tokenizer=tok, image_seq_len=4, chat_template=_template("<image>")
    )
    _save(model, proc, folder)


def save_qwen(folder: Path, family: str) -> None:
    """family: 'qwen2.5vl' or 'qwen3.5'."""
    import transformers as tf

    torch.manual_seed(0)
    specials = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tok = tokenizer(specials)
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in
           [("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>")]}  # fmt: skip
    text = dict(
        vocab_size=len(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1]},
        **TEXT,
    )
    vision = dict(depth=2, hidden_size=VISION_HIDDEN, intermediate_size=64, num_heads=4,
                  out_hidden_size=TEXT_HIDDEN, patch_size=7, spatial_merge_size=2,
                  temporal_patch_size=2)  # fmt: skip
    if family == "qwen2.5vl":
        # windowed attention over 28-px windows, so a 42 x 56 image has several windows
        vision |= dict(window_size=28, fullatt_block_indexes=[1], in_chans=3)
        cfg = tf.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    else:
        vision |= dict(num_position_embeddings=64, in_channels=3)
        text |= dict(layer_types=["full_attention"] * TEXT["num_hidden_layers"], head_dim=8,
                     linear_num_value_heads=2, linear_num_key_heads=2)  # fmt: skip
        cfg = tf.Qwen3_5Config(vision_config=vision, text_config=text, **ids)
        model = tf.Qwen3_5ForConditionalGeneration(cfg).eval()
    improc = tf.Qwen2VLImageProcessorPil(
        patch_size=7, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 14 * 14 * 4, "longest_edge": 14 * 14 * 64},
    )  # fmt: skip
    # Qwen's composite processor cannot be built without torchvision (its video half), so the
    # parts are saved, the chat template where the processor keeps it.
    tok.chat_template = None
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    improc.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(
        _template("<|vision_start|><|image_pad|><|vision_end|>"), encoding="utf-8"
    )


def save_judge_lm(folder: Path) -> None:
    """A tiny random Llama whose word-level vocabulary has YES and NO (a judge's answers)."""
    import transformers as tf

    torch.manual_seed(0)
    tok = tokenizer(["YES", "NO"])
    cfg = tf.LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TEXT)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


def _save(model, proc, folder: Path) -> None:
    model.generation_config.pad_token_id = proc.tokenizer.pad_token_id
    model.generation_config.eos_token_id = proc.tokenizer.eos_token_id
    model.save_pretrained(folder)
    proc.save_pretrained(folder)


BUILDERS = {
    "llava": save_llava,
    "idefics2": save_idefics2,
    "qwen2.5vl": lambda f: save_qwen(f, "qwen2.5vl"),
    "qwen3.5": lambda f: save_qwen(f, "qwen3.5"),
}
