"""Stage: score eval_perturb's tables: BERTScore of each perturbed caption against the original
caption and against the references (CLIPScore given a CLIP), summarised per model, mode and
level with bootstrap CIs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from src.data.io import atomic_write, is_complete, write_json_atomic, write_manifest
from src.metrics.caption_tables import (
    add_scorer_args,
    build_scorers,
    clip_scores,
    nll_scores,
    other_image_rows,
    reference_scores,
)
from src.metrics.text import score_summary


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.score_perturb",
        description="Score perturbation tables (<perturb_dir>/<model>/<mode>/<shard>.csv).",
    )
    p.add_argument("--perturb_dir", type=Path, required=True, help="eval_perturb's --out_dir")
    p.add_argument("--out_dir", type=Path, required=True)
    add_scorer_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    tables = sorted(args.perturb_dir.glob("*/*/*.csv"))
    if not tables:
        print(
            f"error: no <model>/<mode>/<shard>.csv tables under {args.perturb_dir}", file=sys.stderr
        )
        return 2
    if args.skip_existing and is_complete(args.out_dir):
        print(f"  {args.out_dir} is complete, nothing to do")
        return 0
    try:
        bert, clip = build_scorers(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scored = []
    for path in tables:
        model, mode = path.parent.parent.name, path.parent.name
        target = args.out_dir / model / mode / path.name
        if args.skip_existing and target.exists():
            scored.append(pd.read_csv(target))
            continue
        df = pd.read_csv(path, keep_default_na=False)
        df["bertscore_vs_original"] = bert(df["caption"].tolist(), df["caption_original"].tolist())[
            "bertscore_f1"
        ]
        other = other_image_rows(df, args.seed)
        if other is not None:  # chance level: clean captions of two different images
            df["bertscore_vs_original_mismatched"] = bert(
                df["caption_original"].tolist(), df["caption_original"].iloc[other].tolist()
            )["bertscore_f1"]
        df = reference_scores(df, ["caption"], bert, args.seed)
        if clip is not None:
            df = clip_scores(df, ["caption"], clip, args.image_dir)
        if args.nll_vec_dir is not None:
            df = nll_scores(df, ["caption", "caption_original"], args.nll_vec_dir,
                            args.nll_model, args.device, args.seed)  # fmt: skip
        df.insert(0, "model", model)
        atomic_write(target, lambda tmp, df=df: df.to_csv(tmp, index=False))
        scored.append(df)
    rows = pd.concat(scored, ignore_index=True)
    cols = [c for c in rows.columns if c.startswith(("bertscore_", "clipscore_", "mini_nll_"))]
    rows["caption_changed"] = (rows["caption"] != rows["caption_original"]).astype(float)
    summary = score_summary(
        rows, ["model", "mode", "level"], [*cols, "caption_changed"], args.bootstrap, args.seed
    )
    atomic_write(args.out_dir / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    meta = {**bert.describe(), **(clip.describe() if clip else {"clipscore_model": None})}
    write_json_atomic(args.out_dir / "summary.json", {"scorers": meta, "scores":
                                                      summary.to_dict("records")})  # fmt: skip
    write_manifest(
        args.out_dir,
        stage="score_perturb",
        scorers=meta,
        args=vars(args),
        tables=[str(p.relative_to(args.perturb_dir)) for p in tables],
    )
    for r in summary[summary.score == "bertscore_vs_original"].itertuples():
        print(
            f"  {r.model} {r.mode} level {r.level:g}: BERTScore vs original {r.mean:.3f} "
            f"[{r.ci_low:.3f}, {r.ci_high:.3f}] (n={r.n})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
