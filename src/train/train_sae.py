"""Stage: TopK sparse autoencoders per LLM layer, trained on the LLM's own text activations
(as Gemma Scope is) with eai-sparsify's SparseCoder.

Corpus: the reference captions of --image_dir's shards (choose shards other than the ones
measured) and the lines of any --text_file, each placed where the image goes in the model's
prompt layout; every token of the text and of the prompt after it is a training row. Writes
<out_dir>/<model>/layers.<l>/ (sparsify's cfg.json + sae.safetensors, SparseCoder.load_from_disk
reads it) and a manifest with each layer's training FVU per epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.cli import add_fields, from_args
from src.data.io import is_complete, write_json_atomic, write_manifest
from src.data.paths import sae_dir, sae_layer_dir
from src.models import MODEL_NAMES
from src.models.base import DEFAULT_PROMPT
from src.runtime import add_runtime_args, csv_list
from src.sae.train import SAEConfig
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_sae",
        description="Train TopK SAEs (eai-sparsify) per layer on the LLM's text activations.",
    )
    p.add_argument("--model", choices=MODEL_NAMES, default="mini")
    p.add_argument("--vlm_id", help="hub id or local path (default: the adapter's default)")
    p.add_argument("--layers", type=lambda s: [int(x) for x in csv_list(s)], required=True)
    p.add_argument("--image_dir", type=Path, help="image root whose captions are the corpus")
    p.add_argument("--shards", type=csv_list, help="shards whose captions to use (default all)")
    p.add_argument("--text_file", type=Path, action="append", help="more text, one per line")
    p.add_argument("--max_texts", type=int, default=0, help="texts in all (0: no limit)")
    p.add_argument("--text_batch", type=int, default=32, help="texts per LLM forward")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--out_dir", type=Path, default=Path("data/sae"))
    add_fields(p, SAEConfig)
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def _folder(a: argparse.Namespace) -> Path:
    return sae_dir(a.out_dir, a.model)


def run(args: argparse.Namespace) -> int:
    from src.sae.runs import corpus_texts, load_named_adapter, text_activations
    from src.sae.train import train_sparse_coder

    cfg = from_args(SAEConfig, args)
    texts = corpus_texts(args)
    adapter = load_named_adapter(args)
    t0 = time.perf_counter()
    acts = text_activations(
        adapter, texts, args.layers, args.prompt, args.text_batch, progress=not args.no_progress
    )
    t_acts, layers = time.perf_counter() - t0, {}
    for layer, x in acts.items():
        res = train_sparse_coder(x, cfg, adapter.device, progress=not args.no_progress)
        res.sae.save_to_disk(sae_layer_dir(_folder(args), layer))
        layers[str(layer)] = {
            "fvu_per_epoch": [round(f, 5) for f in res.fvu_per_epoch],
            "seconds": round(res.seconds, 2),
            "steps": res.steps,
        }
        print(
            f"[train_sae] layer {layer}: train FVU {res.fvu_per_epoch[-1]:.4f} "
            f"({res.steps} steps, {res.seconds:.1f}s)"
        )
    write_json_atomic(_folder(args) / "training.json", layers)
    write_manifest(
        _folder(args),
        stage="train_sae",
        model=args.model,
        **{k: v for k, v in adapter.describe().items() if k != "adapter"},
        hook="hook_resid_post",
        layers=args.layers,
        sae=vars(cfg),
        n_texts=len(texts),
        n_tokens=int(next(iter(acts.values())).shape[0]),
        training=layers,
        seconds_activations=round(t_acts, 2),
        args=vars(args),
    )
    return 0


STAGE = Stage(
    name="train_sae",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.image_dir] if a.image_dir else [],
    outputs=lambda a: [_folder(a)],
    done=lambda a: is_complete(_folder(a)),
    description="TopK SAEs per layer on the LLM's text activations",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
