"""Stage: score eval_perturb's tables: BERTScore of each perturbed caption against the original
caption and against the references (CLIPScore given a CLIP; the NLL under mini given its
vectors), summarised per model, mode and level with bootstrap CIs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from src.cli import add_fields, from_args
from src.data.io import atomic_write, read_manifest, write_json_atomic, write_manifest
from src.data.paths import perturb_captions_dir, summary_table
from src.errors import InputMissing
from src.metrics.caption_tables import BertColumns, other_image_rows, reference_scores
from src.metrics.text import BertScorer, score_summary
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
        prog="python -m src.eval.score_perturb",
        description="Score perturbation tables (<perturb_dir>/<model>/<mode>/<shard>.csv).",
    )
    p.add_argument("--perturb_dir", type=Path, required=True, help="eval_perturb's --out_dir")
    p.add_argument("--out_dir", type=Path, required=True)
    add_fields(p, ScoringConfig)
    return p


def perturb_tables(perturb_dir: Path) -> list[Path]:
    pattern = perturb_captions_dir(Path(), "*", "*") / "*.csv"  # <model>/<mode>/<shard>.csv
    tables = sorted(Path(perturb_dir).glob(str(pattern)))
    if not tables:
        raise InputMissing(f"no <model>/<mode>/<shard>.csv tables under {perturb_dir}")
    return tables


def bertscore_perturb(df: pd.DataFrame, bert: BertScorer, seed: int = 0) -> pd.DataFrame:
    """Each perturbed caption against the original and the references, in one bert-score call
    (the columns share most sentences and repeat pairs across levels: BertColumns)."""
    batch = BertColumns(df, bert)
    batch.add("bertscore_vs_original", df["caption"].tolist(), df["caption_original"].tolist())
    other = other_image_rows(df, seed)
    if other is not None:  # chance level: clean captions of two different images
        batch.add("bertscore_vs_original_mismatched", df["caption_original"].tolist(),
                  df["caption_original"].iloc[other].tolist())  # fmt: skip
    reference_scores(df, ["caption"], bert, seed, batch)
    return batch.run()


def score_table(path: Path, model: str, scorers: Scorers) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False)
    df = bertscore_perturb(df, scorers.bert, scorers.cfg.seed)
    df = scorers.image_text(df, ["caption", "caption_original"], model)
    df.insert(0, "model", model)
    return df


def run(args: argparse.Namespace) -> int:
    tables = perturb_tables(args.perturb_dir)
    scorers = build_scorers(from_args(ScoringConfig, args))

    def target(p: Path) -> Path:  # <out_dir>/<model>/<mode>/<shard>.csv, as the input
        return perturb_captions_dir(args.out_dir, p.parent.parent.name, p.parent.name) / p.name

    rows = score_tables([(p, target(p)) for p in tables],
                        lambda p: score_table(p, p.parent.parent.name, scorers),
                        skip_existing=args.skip_existing)  # fmt: skip
    cols = [c for c in rows.columns if c.startswith(SCORE_PREFIXES)]
    rows["caption_changed"] = (rows["caption"] != rows["caption_original"]).astype(float)
    by = ["model", "mode", "level"]
    summary = score_summary(rows, by, [*cols, "caption_changed"], args.bootstrap, args.seed)
    out = args.out_dir
    atomic_write(summary_table(out), lambda tmp: summary.to_csv(tmp, index=False))
    write_json_atomic(
        summary_table(out, ".json"),
        {"scorers": scorers.describe(), "scores": summary.to_dict("records")},
    )
    upstream = {str(p.parent.relative_to(args.perturb_dir)):
                (read_manifest(p.parent) or {}).get("upstream") for p in tables}  # fmt: skip
    write_manifest(
        out,
        stage="score_perturb",
        upstream=upstream,
        scorers=scorers.describe(),
        args=vars(args),
        tables=[str(p.relative_to(args.perturb_dir)) for p in tables],
    )
    for r in summary[summary.score == "bertscore_vs_original"].itertuples():
        print(f"  {r.model} {r.mode} level {r.level:g}: BERTScore vs original {r.mean:.3f} "
              f"[{r.ci_low:.3f}, {r.ci_high:.3f}] (n={r.n})")  # fmt: skip
    return 0


STAGE = Stage(
    name="score_perturb",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.perturb_dir, *(d for d in (a.nll_vec_dir, a.nll_vec_root) if d)],
    outputs=lambda a: [a.out_dir],
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
