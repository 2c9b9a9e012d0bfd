"""The work of the SAE stages (cache_activations, train_sae, sae_reconstruction, sae_semantic),
kept here so that each stage module stays a thin parse-call-write."""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.data.images import list_images, read_captions, select_shards
from src.data.io import read_manifest
from src.data.paths import sae_layer_dir
from src.errors import InputMissing, UserError
from src.metrics.sae import TokenSums, active_features, dead_share, fvu_with_ci, l0, overlap_share
from src.metrics.stats import derangement, summarize
from src.models.base import VLMAdapter
from src.sae.cache import activation_batches, chunk_done, save_layer_chunk, source_shards
from src.sae.coders import Coder, load_coder
from src.sae.residual import (
    ImageBatch,
    image_and_control,
    image_batches,
    residuals,
    sequence_nll,
    splice_resid,
)


def load_named_adapter(args: argparse.Namespace) -> VLMAdapter:
    from src.models import load_adapter
    from src.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return load_adapter(
        args.model, args.vlm_id, device=device, dtype=resolve_dtype(args.dtype, device)
    )


def check_layers(adapter: VLMAdapter, layers: list[int]) -> None:
    n = len(adapter.lm_blocks())
    bad = [layer for layer in layers if not 0 <= layer < n]
    if bad:
        raise UserError(f"--layers {bad}: the LLM has blocks 0..{n - 1}")


def cache_shard(
    adapter: VLMAdapter, args: argparse.Namespace, shard: str, folder: Path
) -> dict[str, Any]:
    """Write one shard's activation chunks (chunks already on disk are kept, not recomputed)."""
    check_layers(adapter, args.layers)
    skipped: list[str] = []
    tokens: dict[str, list[int]] = defaultdict(list)
    n, index = 0, -1
    bar = tqdm(desc=f"activations {shard}", unit="img", disable=args.no_progress)
    chunks = image_batches(args.image_dir, shard, args.save_every, args.limit, skipped)
    for index, chunk in enumerate(chunks):
        n += len(chunk.keys)
        bar.update(len(chunk.keys))
        if chunk_done(folder, args.layers, index):
            continue
        sets: dict[int, dict[str, list]] = {layer: defaultdict(list) for layer in args.layers}
        for s in range(0, len(chunk.keys), args.batch_size):
            sub = ImageBatch(
                *(x[s : s + args.batch_size] for x in (chunk.keys, chunk.captions, chunk.images))
            )
            acts = image_and_control(adapter, sub, args.layers, args.prompt)
            for layer in args.layers:
                for name, rows in acts[layer].items():
                    sets[layer][name] += rows
        for name, rows in sets[args.layers[0]].items():
            tokens[name] += [r.shape[0] for r in rows]
        for layer in args.layers:
            save_layer_chunk(folder, layer, index, chunk.keys, chunk.captions, sets[layer])
    bar.close()
    if n == 0:
        raise InputMissing(f"{args.image_dir}/{shard}: no image with a caption to cache")
    mean_tokens = {k: round(sum(v) / len(v), 2) for k, v in tokens.items()}
    return {
        "n_images": n,
        "chunks": index + 1,
        "skipped": skipped,
        "sets": list(tokens),
        "tokens": {"mean_per_image": mean_tokens},
    }


# --- train_sae ----------------------------------------------------------------------------


def corpus_texts(args: argparse.Namespace) -> list[str]:
    """The SAE's text corpus: every reference caption of the chosen image shards, then the
    lines of --text_file, capped at --max_texts (in that order)."""
    texts: list[str] = []
    if args.image_dir is not None:
        for shard in select_shards(args.image_dir, args.shards):
            for rec in list_images(args.image_dir, shard):
                texts += read_captions(rec.caption_path) if rec.caption_path else []
    for f in args.text_file or []:
        texts += [t.strip() for t in Path(f).read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise InputMissing("no training text: give --image_dir with captions or --text_file")
    return texts[: args.max_texts] if args.max_texts else texts


@torch.no_grad()
def text_activations(
    adapter: VLMAdapter,
    texts: list[str],
    layers: list[int],
    prompt: str,
    batch_size: int,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Each text in the prompt's place of the image (the control layout): its tokens and the
    prompt's after it, at each layer -> {layer: (N_tokens, D)} float32."""
    check_layers(adapter, layers)
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for s in tqdm(range(0, len(texts), batch_size), desc="text activations", disable=not progress):
        acts, _ = residuals(
            adapter, adapter.control_sequences(texts[s : s + batch_size], prompt), layers
        )
        for layer in layers:
            out[layer] += [
                torch.cat([c, t])
                for c, t in zip(acts[layer]["control"], acts[layer]["control_text"], strict=True)
            ]
    return {layer: torch.cat(rows) for layer, rows in out.items()}


# --- measuring stages ---------------------------------------------------------------------


def load_coders(sae_root: Path, layers: list[int], device: torch.device) -> dict[int, Coder]:
    return {layer: load_coder(sae_layer_dir(sae_root, layer), device) for layer in layers}


def check_source(args: argparse.Namespace) -> None:
    """A cache made by another model than --model is refused."""
    if args.acts_dir is None:
        return
    for shard in source_shards(args, args.model):
        m = read_manifest(Path(args.acts_dir) / shard) or {}
        if m.get("model") != args.model:
            raise UserError(
                f"{args.acts_dir}/{shard} was cached by {m.get('model')!r}, not {args.model!r}"
            )


@torch.no_grad()
def reconstruction_rows(
    args: argparse.Namespace, adapter: VLMAdapter | None, coders: dict[int, Coder]
) -> tuple[list[dict], list[dict]]:
    """Per layer and token set: FVU (CI over images), L0 (CI), dead share; and per-image rows."""
    layers = sorted(coders)
    sums: dict[tuple[int, str], list[TokenSums]] = defaultdict(list)
    l0s: dict[tuple[int, str], list[float]] = defaultdict(list)
    ever: dict[tuple[int, str], torch.Tensor] = {}
    images: list[dict] = []
    for shard in source_shards(args, args.model):
        for keys, _caps, acts in activation_batches(args, adapter, layers, shard):
            for layer, coder in coders.items():
                for name, rows in acts[layer].items():
                    for key, x in zip(keys, rows, strict=True):
                        codes = coder.encode(x.to(coder.W_enc.device))
                        s = TokenSums.of(x, coder.decode(codes).cpu())
                        sums[layer, name].append(s)
                        l0s[layer, name].append(float(l0(codes).float().mean()))
                        act = active_features(codes).cpu()
                        ever[layer, name] = (
                            ever[layer, name] | act if (layer, name) in ever else act
                        )
                        images.append(
                            {
                                "shard": shard,
                                "key": key,
                                "layer": layer,
                                "tokens": name,
                                "fvu": float(s.err / (s.sxx - s.sx.pow(2).sum() / s.n)),
                                "l0": l0s[layer, name][-1],
                            }
                        )
    rows = []
    for (layer, name), parts in sorted(sums.items()):
        f = fvu_with_ci(TokenSums.stack(parts), args.bootstrap, args.seed)
        z = summarize(torch.tensor(l0s[layer, name]), args.bootstrap, args.seed)
        rows.append(
            {
                "model": args.model,
                "layer": layer,
                "tokens": name,
                "fvu": f["mean"],
                "fvu_ci_low": f["ci_low"],
                "fvu_ci_high": f["ci_high"],
                "l0": z["mean"],
                "l0_ci_low": z["ci_low"],
                "l0_ci_high": z["ci_high"],
                "dead_share": dead_share(ever[layer, name]),
                "n_images": f["n"],
                "n_features": coders[layer].n_features,
                "k": coders[layer].k,
            }
        )
    return rows, images


@torch.no_grad()
def delta_nll(
    args: argparse.Namespace, adapter: VLMAdapter, coders: dict[int, Coder]
) -> tuple[dict[int, dict[str, float]], list[dict]]:
    """Caption NLL with the SAE's reconstruction spliced in at one layer for the image tokens
    only, minus the clean NLL, per image; summarised per layer with a CI over images."""
    if args.image_dir is None:
        raise UserError("the delta-NLL needs --image_dir (the images and their captions)")
    blocks = adapter.lm_blocks()
    per: dict[int, list[float]] = defaultdict(list)
    rows: list[dict] = []
    left = args.nll_images
    for shard in select_shards(args.image_dir, args.shards):
        for b in image_batches(args.image_dir, shard, args.batch_size, left):
            seq = adapter.image_sequences(adapter.preprocessor(b.images, args.prompt), b.captions)
            assert seq.labels is not None
            clean = sequence_nll(adapter.run_lm(seq), seq.labels).cpu()
            for layer, coder in coders.items():
                with splice_resid(blocks, layer, seq.spans["image"], coder.reconstruct):
                    d = sequence_nll(adapter.run_lm(seq), seq.labels).cpu() - clean
                per[layer] += d.tolist()
                rows += [
                    {
                        "shard": shard,
                        "key": k,
                        "layer": layer,
                        "nll": float(c),
                        "delta_nll": float(v),
                    }
                    for k, c, v in zip(b.keys, clean, d, strict=True)
                ]
            left -= len(b.keys)
        if left <= 0:
            break
    out = {layer: summarize(torch.tensor(v), args.bootstrap, args.seed) for layer, v in per.items()}
    return out, rows


def join_nll(
    rows: list[dict], images: list[dict], nll: dict[int, dict[str, float]], nll_rows: list[dict]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The delta-NLL summary added to the image rows of each layer; per-image rows joined."""
    for r in rows:
        s = nll.get(r["layer"]) if r["tokens"] == "image" else None
        if s:
            r.update({"delta_nll": s["mean"], "delta_nll_ci_low": s["ci_low"],
                      "delta_nll_ci_high": s["ci_high"], "nll_images": s["n"]})  # fmt: skip
    cols = ["shard", "key", "layer", "nll", "delta_nll"]
    per_image = pd.DataFrame(images).merge(
        pd.DataFrame(nll_rows, columns=cols).assign(tokens="image"),
        on=["shard", "key", "layer", "tokens"], how="left",
    )  # fmt: skip
    return pd.DataFrame(rows), per_image


# --- sae_semantic ---------------------------------------------------------------------------

# function words that every caption shares (stripped before matching lens words)
_FUNCTION_WORDS = """the and with from that this there their its into onto over under near next
beside are was were has have had for not but all any one"""
STOPWORDS = frozenset(_FUNCTION_WORDS.split())


def content_words(caption: str) -> set[str]:
    """Lower-case words of 3+ letters and numbers, minus a few function words."""
    words = re.findall(r"[a-z]+|\d+", caption.lower())
    return {w for w in words if (len(w) >= 3 or w.isdigit()) and w not in STOPWORDS}


def token_word_list(tokenizer: Any, ids: list[int]) -> list[str]:
    """Token strings as words, in order, each once: the tokenizer's space marks and punctuation
    stripped, empty ones dropped."""
    out: dict[str, None] = {}
    for t in tokenizer.convert_ids_to_tokens(ids):
        w = re.sub(r"[^a-z0-9]", "", str(t).lower().replace("Ġ", "").replace("▁", ""))
        if w:
            out[w] = None
    return list(out)


def token_words(tokenizer: Any, ids: list[int]) -> set[str]:
    """Token strings as words (token_word_list as a set)."""
    return set(token_word_list(tokenizer, ids))


@torch.no_grad()
def lens_tokens(
    adapter: VLMAdapter, coder: Coder, features: list[int], top_m: int
) -> dict[int, list[int]]:
    """{feature: ids of the top_m tokens of its decoder direction read through the LLM's final
    norm module and unembedding, best first} (the logit lens of a feature)."""
    norm, unembed = adapter.lm_readout()
    out = {}
    for s in range(0, len(features), 256):
        f = features[s : s + 256]
        w = unembed.weight
        dirs = coder.W_dec[f].to(w.device, w.dtype)  # (u, D)
        ids = unembed(norm(dirs[:, None]))[:, 0].topk(top_m, dim=-1).indices.tolist()
        out.update(dict(zip(f, ids, strict=True)))
    return out


def lens_words(adapter: VLMAdapter, coder: Coder, features: list[int], top_m: int) -> dict:
    """{feature: the words of its logit lens's top_m tokens} (lens_tokens as word sets)."""
    tok = adapter.text_tokenizer()
    return {
        f: token_words(tok, ids) for f, ids in lens_tokens(adapter, coder, features, top_m).items()
    }


def lens_descriptions(
    adapter: VLMAdapter, coder: Coder, features: list[int], top_m: int
) -> dict[int, str]:
    """{feature: its logit lens's words in rank order, comma-separated}: the offline
    description of a feature that the judge is shown."""
    tok = adapter.text_tokenizer()
    lens = lens_tokens(adapter, coder, features, top_m)
    return {f: ", ".join(token_word_list(tok, ids)) or "(no words)" for f, ids in lens.items()}


@dataclass
class SemanticTops:
    """What sae_semantic saw, for the judge: the images (shard, key, caption, in order), their
    top features per layer, the features alive per layer (active on some image token) and the
    mismatched pairing (image i with image other[i])."""

    shards: list[str]
    keys: list[str]
    captions: list[str]
    top: dict[int, list[torch.Tensor]]
    alive: dict[int, torch.Tensor]
    other: list[int]


@torch.no_grad()
def semantic_rows(
    args: argparse.Namespace, adapter: VLMAdapter, coders: dict[int, Coder]
) -> tuple[list[dict], list[dict], SemanticTops]:
    """Per layer: the share of an image's active features that its own caption's control
    tokens also use, against another image's caption (chance); and the share of its top
    features whose logit-lens words name a word of its caption, against a mismatched caption."""
    layers = sorted(coders)
    img: dict[int, list] = defaultdict(list)
    cap: dict[int, list] = defaultdict(list)
    top: dict[int, list] = defaultdict(list)
    keys: list[str] = []
    captions: list[str] = []
    shards: list[str] = []
    for shard in source_shards(args, args.model):
        for k, c, acts in activation_batches(args, adapter, layers, shard):
            keys += k
            shards += [shard] * len(k)
            captions += c
            for layer, coder in coders.items():
                for x_img, x_cap in zip(acts[layer]["image"], acts[layer]["control"], strict=True):
                    codes = coder.encode(x_img.to(coder.W_enc.device))
                    img[layer].append(active_features(codes).cpu())
                    cap[layer].append(active_features(coder.encode(x_cap.to(codes.device))).cpu())
                    top[layer].append(codes.sum(0).topk(args.top_features).indices.cpu())
    if len(keys) < 2:
        raise InputMissing("sae_semantic needs at least two images (chance pairs)")
    other = derangement(len(keys), args.seed).tolist()
    words = [content_words(c) for c in captions]
    rows, per_image = [], []
    for layer, coder in coders.items():
        lens = lens_words(
            adapter, coder, sorted({int(f) for t in top[layer] for f in t}), args.top_tokens
        )
        measures = {"overlap": [], "overlap_chance": [], "lens": [], "lens_chance": []}
        for i, j in enumerate(other):
            measures["overlap"].append(overlap_share(img[layer][i], cap[layer][i]))
            measures["overlap_chance"].append(overlap_share(img[layer][i], cap[layer][j]))
            hits = [lens[int(f)] for f in top[layer][i]]
            measures["lens"].append(sum(bool(h & words[i]) for h in hits) / len(hits))
            measures["lens_chance"].append(sum(bool(h & words[j]) for h in hits) / len(hits))
        for i, key in enumerate(keys):
            per_image.append({"key": key, "layer": layer, **{m: v[i] for m, v in measures.items()}})
        for m in ("overlap", "lens"):
            own, chance = torch.tensor(measures[m]), torch.tensor(measures[m + "_chance"])
            a, b, d = (summarize(v, args.bootstrap, args.seed) for v in (own, chance, own - chance))
            rows.append(
                {
                    "model": args.model,
                    "layer": layer,
                    "measure": m,
                    "own": a["mean"],
                    "own_ci_low": a["ci_low"],
                    "own_ci_high": a["ci_high"],
                    "chance": b["mean"],
                    "chance_ci_low": b["ci_low"],
                    "chance_ci_high": b["ci_high"],
                    "diff": d["mean"],
                    "diff_ci_low": d["ci_low"],
                    "diff_ci_high": d["ci_high"],
                    "n_images": a["n"],
                }
            )
    alive = {layer: torch.stack(v).any(0) for layer, v in img.items()}
    return rows, per_image, SemanticTops(shards, keys, captions, top, alive, other)


# --- sae_semantic --judge --------------------------------------------------------------------


def judge_tables(
    args: argparse.Namespace, adapter: VLMAdapter, coders: dict[int, Coder], tops: SemanticTops
) -> tuple[list[dict], list[dict]]:
    """Seed C's judge (src.sae.judge) on what semantic_rows saw: each feature described by its
    logit-lens words (--top_tokens), judged own / random / mismatched per layer."""
    from src.runtime import resolve_dtype
    from src.sae.judge import Shown, judge_rows, make_judge

    judge = make_judge(args.judge, args.judge_model, adapter.device,
                       resolve_dtype(args.dtype, adapter.device), args.judge_batch)  # fmt: skip
    paths = {}
    if args.image_dir is not None:
        for shard in sorted(set(tops.shards)):
            paths.update({(shard, r.key): r.path for r in list_images(args.image_dir, shard)})
    where = zip(tops.shards, tops.keys, tops.captions, strict=True)
    shown = [Shown(c, paths.get((s, k))) for s, k, c in where]
    words = {}
    for layer, coder in coders.items():
        feats = set(tops.alive[layer].nonzero().flatten().tolist())
        feats |= {int(f) for t in tops.top[layer] for f in t}
        words[layer] = lens_descriptions(adapter, coder, sorted(feats), args.top_tokens)
    meta = {"model": args.model, "judge": args.judge, "judge_model": judge.model_id,
            "judge_shown": judge.shown,
            "description": f"logit lens, top {args.top_tokens} tokens"}  # fmt: skip
    rows, per_image = judge_rows(judge, words, tops.top, tops.alive, shown, tops.other, meta,
                                 args.bootstrap, args.seed, not args.no_progress)  # fmt: skip
    for r in per_image:
        r.update(shard=tops.shards[r["image"]], key=tops.keys[r["image"]])
    return rows, per_image
