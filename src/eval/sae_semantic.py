"""Stage: do the SAE features that fire on an image's tokens mean what its caption says? Two
judge-free measures per layer, each against chance (another image's caption, a derangement):

- overlap: the share of the features active on any of the image's tokens that are also active
  on its own caption's tokens in the text-only control;
- lens: the share of the image's top features (by summed activation over its tokens) whose
  logit-lens words (the decoder direction through the LLM's final norm module and unembedding,
  top --top_tokens tokens) include a content word of its caption (colours, shapes, sizes,
  counts, positions: its words of 3+ letters and numbers, a few function words removed).

Writes <out_dir>/sae_semantic_<model>.csv (own, chance and their difference, bootstrap CIs over
images) and sae_semantic_images_<model>.csv.

Optional, off by default (--judge none): seed C's LLM-judge protocol (src/sae/judge.py). Each top
feature is described by its logit-lens words and a judge says YES / NO, read from its next-token
probabilities, to "do these words describe the image?". `--judge text-lm` (offline, default
SmolLM2-135M-Instruct) cannot see images: it is shown the image's reference caption instead (the
table's judge_shown column says so); `--judge vlm --judge_model HUB_ID` is shown the image (it
needs --image_dir). Per layer: the share of YES on the image's top features (own), on as many
random features alive in that layer (random) and on its top features against another image
(mismatched), with bootstrap CIs over images: <out_dir>/sae_judge[_images]_<model>.csv.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from src.data.io import atomic_write, write_json_atomic, write_manifest
from src.data.paths import sae_table
from src.sae.cache import add_measure_args, measured_sae_dir
from src.sae.judge import JUDGES
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.sae_semantic",
        description="Image-vs-caption SAE feature overlap and logit-lens word hits, vs chance.",
    )

    def own() -> None:
        p.add_argument(
            "--top_features", type=int, default=10, help="image features read by the lens"
        )
        p.add_argument("--top_tokens", type=int, default=20, help="tokens per feature's lens")
        p.add_argument(
            "--judge",
            choices=["none", *JUDGES],
            default="none",
            help="seed C's LLM judge of the top features' lens words (default none: off; "
            "text-lm is shown the reference caption in place of the image, vlm the image)",
        )
        p.add_argument(
            "--judge_model",
            help="the judge's model: an OFFLINE_LMS name, hub id or folder (text-lm, default "
            "smollm2-135m-instruct) or a hub chat VLM id (vlm, required)",
        )
        p.add_argument("--judge_batch", type=int, default=16, help="judge prompts per forward")

    add_measure_args(p, own)
    return p


def run(args: argparse.Namespace) -> int:
    from src.sae.runs import (
        check_source,
        judge_tables,
        load_coders,
        load_named_adapter,
        semantic_rows,
    )

    check_source(args)
    adapter = load_named_adapter(args)  # the readout (final norm, unembedding, tokenizer)
    coders = load_coders(measured_sae_dir(args), args.layers, adapter.device)
    rows, per_image, tops = semantic_rows(args, adapter, coders)
    if args.judge != "none":
        write_judge(args, *judge_tables(args, adapter, coders, tops))
    df, out = pd.DataFrame(rows), args.out_dir
    atomic_write(sae_table(out, "sae_semantic", args.model), lambda t: df.to_csv(t, index=False))
    atomic_write(
        sae_table(out, "sae_semantic_images", args.model),
        lambda t: pd.DataFrame(per_image).to_csv(t, index=False),
    )
    write_json_atomic(
        sae_table(out, "sae_semantic", args.model, ".json"), {"model": args.model, "rows": rows}
    )
    write_manifest(
        out,
        stage="sae_semantic",
        model=args.model,
        sae_dir=measured_sae_dir(args),
        args=vars(args),
    )
    print(
        df[["layer", "measure", "own", "chance", "diff", "diff_ci_low", "diff_ci_high"]].to_string(
            index=False
        )
    )
    return 0


def write_judge(args: argparse.Namespace, rows: list[dict], per_image: list[dict]) -> None:
    out, df = args.out_dir, pd.DataFrame(rows)
    atomic_write(sae_table(out, "sae_judge_images", args.model),
                 lambda t: pd.DataFrame(per_image).to_csv(t, index=False))  # fmt: skip
    atomic_write(sae_table(out, "sae_judge", args.model), lambda t: df.to_csv(t, index=False))
    cols = ["layer", "own", "random", "mismatched", "own_minus_random", "own_minus_mismatched",
            "own_p_yes", "random_p_yes", "mismatched_p_yes"]  # fmt: skip
    print(f"judge {args.judge} ({rows[0]['judge_model']}, shown the {rows[0]['judge_shown']}):")
    print(df[cols].to_string(index=False))


def outputs(a: argparse.Namespace) -> list:
    judged = [sae_table(a.out_dir, "sae_judge", a.model)] if a.judge != "none" else []
    return [*judged, sae_table(a.out_dir, "sae_semantic", a.model, ".json")]


STAGE = Stage(
    name="sae_semantic",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [measured_sae_dir(a)] + ([a.acts_dir] if a.acts_dir else []),
    outputs=outputs,
    description="SAE feature overlap and logit-lens hits of image tokens vs chance",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
