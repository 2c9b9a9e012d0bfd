"""Stage: BERTScore (and CLIPScore, given a CLIP; the NLL under mini, given its vectors) of
eval_captions' tables: each caption column against the reference captions, and reconstructed
against original captions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from src.cli import add_fields, from_args
from src.data.identity import upstream_identity
from src.data.io import atomic_write, write_json_atomic, write_manifest
from src.data.paths import scored_dir, summary_table
from src.errors import InputMissing
from src.metrics.caption_tables import bertscore_columns
from src.metrics.text import score_summary, split_references
from src.models.scoring import (
    SCORE_PREFIXES,
    Scorers,
    ScoringConfig,
    build_scorers,
    score_tables,
)
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.score_captions",
        description="Score caption tables from eval_captions: BERTScore F1 of each caption "
        "against its references and between original (post) and reconstructed captions; "
        "CLIPScore against the image when --clip_model is given.",
    )
    p.add_argument("--caption_dir", type=Path, required=True, help="eval_captions' --out_dir")
    p.add_argument("--out_dir", type=Path, help="default: <caption_dir>/scored")
    add_fields(p, ScoringConfig)
    return p


def out_dir(args: argparse.Namespace) -> Path:
    return args.out_dir or scored_dir(args.caption_dir)


def caption_tables(caption_dir: Path) -> list[Path]:
    tables = sorted(caption_dir.glob("*.csv"))
    if not tables:
        raise InputMissing(f"no caption tables in {caption_dir} (--caption_dir): run eval_captions")
    return tables


def score_table(path: Path, scorers: Scorers) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False)
    empty = int((df["reference"].map(split_references).map(len) == 0).sum())
    if empty:
        print(f"  {path.name}: {empty} image(s) without reference caption (scores NaN)")
    df = bertscore_columns(df, scorers.bert, scorers.cfg.seed)
    model = upstream_identity(path.parent).get("model")  # whose captions (for --nll_vec_root)
    return scorers.image_text(df, [c for c in df.columns if c.startswith("caption_")], model)


def run(args: argparse.Namespace) -> int:
    tables, out = caption_tables(args.caption_dir), out_dir(args)
    scorers = build_scorers(from_args(ScoringConfig, args))
    rows = score_tables(
        [(p, out / p.name) for p in tables],
        lambda p: score_table(p, scorers),
        skip_existing=args.skip_existing,
    )
    cols = [c for c in rows.columns if c.startswith(SCORE_PREFIXES)]
    summary = score_summary(rows, [], cols, args.bootstrap, args.seed)
    atomic_write(summary_table(out), lambda tmp: summary.to_csv(tmp, index=False))
    write_json_atomic(
        summary_table(out, ".json"),
        {"scorers": scorers.describe(), "scores": summary.to_dict("records")},
    )
    write_manifest(
        out,
        stage="score_captions",
        upstream=upstream_identity(args.caption_dir),
        scorers=scorers.describe(),
        args=vars(args),
        tables=[p.name for p in tables],
    )
    for r in summary.itertuples():
        print(f"  {r.score}: {r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] (n={r.n})")
    return 0


STAGE = Stage(
    name="score_captions",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.caption_dir, *(d for d in (a.nll_vec_dir, a.nll_vec_root) if d)],
    outputs=lambda a: [out_dir(a)],
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
