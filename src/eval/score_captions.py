"""Stage: BERTScore (and CLIPScore, given a CLIP) of eval_captions' tables: each caption column
against the reference captions, and reconstructed against original captions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from src.data.io import atomic_write, is_complete, write_json_atomic, write_manifest
from src.data.paths import scored_dir
from src.metrics.caption_tables import (
    add_scorer_args,
    build_scorers,
    clip_scores,
    nll_scores,
    reference_scores,
)
from src.metrics.text import score_summary, split_references


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.score_captions",
        description="Score caption tables from eval_captions: BERTScore F1 of each caption "
        "against its references and between original (post) and reconstructed captions; "
        "CLIPScore against the image when --clip_model is given.",
    )
    p.add_argument("--caption_dir", type=Path, required=True, help="eval_captions' --out_dir")
    p.add_argument("--out_dir", type=Path, help="default: <caption_dir>/scored")
    add_scorer_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    out_dir = args.out_dir or scored_dir(args.caption_dir)
    tables = sorted(p for p in args.caption_dir.glob("*.csv"))
    if not tables:
        print(f"error: no caption tables in {args.caption_dir}", file=sys.stderr)
        return 2
    if args.skip_existing and is_complete(out_dir):
        print(f"  {out_dir} is complete, nothing to do")
        return 0
    try:
        bert, clip = build_scorers(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scored = []
    for path in tables:
        target = out_dir / path.name
        if args.skip_existing and target.exists():
            scored.append(pd.read_csv(target))
            continue
        df = pd.read_csv(path, keep_default_na=False)
        columns = [c for c in df.columns if c.startswith("caption_")]
        empty = int((df["reference"].map(split_references).map(len) == 0).sum())
        if empty:
            print(f"  {path.name}: {empty} image(s) without reference caption (scores NaN)")
        df = reference_scores(df, columns, bert, args.seed)
        if "caption_recon" in df and "caption_post" in df:
            df["bertscore_recon_vs_post"] = bert(
                df["caption_recon"].tolist(), df["caption_post"].tolist()
            )["bertscore_f1"]
        if clip is not None:
            df = clip_scores(df, columns, clip, args.image_dir)
        if args.nll_vec_dir is not None:
            df = nll_scores(df, columns, args.nll_vec_dir, args.nll_model, args.device, args.seed)
        atomic_write(target, lambda tmp, df=df: df.to_csv(tmp, index=False))
        scored.append(df)
    all_rows = pd.concat(scored, ignore_index=True)
    score_cols = [
        c for c in all_rows.columns if c.startswith(("bertscore_", "clipscore_", "mini_nll_"))
    ]
    summary = score_summary(all_rows, [], score_cols, args.bootstrap, args.seed)
    atomic_write(out_dir / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    meta = {**bert.describe(), **(clip.describe() if clip else {"clipscore_model": None})}
    write_json_atomic(out_dir / "summary.json", {"scorers": meta, "scores":
                                                  summary.to_dict("records")})  # fmt: skip
    write_manifest(
        out_dir,
        stage="score_captions",
        scorers=meta,
        args=vars(args),
        tables=[p.name for p in tables],
    )
    for r in summary.itertuples():
        print(f"  {r.score}: {r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] (n={r.n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
