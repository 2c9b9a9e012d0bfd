"""Stage: compare connectors trained alike on different vision towers (seed D's "back into a
VLM" step: the kernel-aligned tower against the original) on the same held-out images.

Reads, per connector folder, train_connector's held-out captions (eval/heldout_captions.csv:
colour / shape of the first object named right) and score_captions' per-image table of the same
images (eval/scored/<shard>.csv: BERTScore F1 of the greedy caption to the references, and the
mean token NLL of the reference caption and of the greedy caption under that connector's own
VLM). Writes one table: per connector and metric the mean with a 95% bootstrap CI, and per
metric the paired difference against --baseline (resampling images) with a sign-flip
permutation p-value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from src.data.io import atomic_write, write_manifest
from src.data.paths import kernel_table, summary_table
from src.errors import InputMissing, UserError
from src.metrics.stats import bootstrap_ci, permutation_pvalue
from src.models.connector import CONFIG_NAME
from src.runtime import parse_assignments
from src.stage import Stage

HELDOUT, SCORED = "eval/heldout_captions.csv", "eval/scored"
NAN = float("nan")
# metric -> (table, column or (said, truth) pair): what each number is, per image
METRICS = {
    "colour_accuracy": (HELDOUT, ("colour_said", "colour")),
    "shape_accuracy": (HELDOUT, ("shape_said", "shape")),
    "bertscore_to_reference": (SCORED, "bertscore_caption_post_ref"),
    "nll_reference_caption": (SCORED, "mini_nll_caption_reference"),
    "nll_greedy_caption": (SCORED, "mini_nll_caption_post"),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.compare_connectors",
        description="Held-out caption metrics of connectors on different towers, with CIs "
        "and paired differences against a baseline connector.",
    )
    p.add_argument(
        "--connector",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a connector folder with eval/heldout_captions.csv and eval/scored/",
    )
    p.add_argument("--baseline", required=True, help="the NAME the others are compared with")
    p.add_argument("--out_dir", type=Path, required=True, help="connectors.csv + manifest")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_existing", action="store_true")  # fmt: skip
    return p


def per_image(folder: Path) -> pd.DataFrame:
    """One row per held-out image (key) and one column per metric."""
    out: dict[str, pd.Series] = {}
    for metric, (table, col) in METRICS.items():
        if table == HELDOUT:
            paths = [folder / table]
        else:  # score_captions' per-shard tables, not its summary.csv
            skip = summary_table(folder / table).name
            paths = sorted(p for p in (folder / table).glob("*.csv") if p.name != skip)
        if not paths or not paths[0].exists():
            raise InputMissing(f"{folder / table} not found (train_connector / score_captions)")
        df = pd.concat([pd.read_csv(p, keep_default_na=False) for p in paths]).set_index("key")
        if isinstance(col, tuple):
            out[metric] = (df[col[0]] == df[col[1]]).astype(float)
        elif col in df.columns:
            out[metric] = pd.to_numeric(df[col], errors="coerce")
    return pd.DataFrame(out)


def _sign_flip(d: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, len(d)), generator=g, dtype=torch.float64) * 2 - 1
    return (signs * d).mean(1)


def compare(tables: dict[str, pd.DataFrame], baseline: str, n_boot: int, seed: int):
    """Rows: (connector, metric, mean, ci_low, ci_high, n) and, for each connector other than
    the baseline, (connector 'X - baseline', metric, paired mean difference, CI, p_value)."""
    if baseline not in tables:
        raise UserError(f"--baseline {baseline!r} is not among {sorted(tables)}")
    rows = []
    for name, df in tables.items():
        for metric in df.columns:
            v = torch.tensor(df[metric].dropna().to_numpy(), dtype=torch.float64)
            lo, hi = bootstrap_ci(v, n_boot, seed)
            rows.append({"connector": name, "metric": metric, "mean": float(v.mean()),
                         "ci_low": lo, "ci_high": hi, "p_value": NAN, "n": len(v)})  # fmt: skip
    base = tables[baseline]
    for name, df in tables.items():
        if name == baseline:
            continue
        for metric in df.columns.intersection(base.columns):
            both = pd.concat([df[metric], base[metric]], axis=1, join="inner").dropna()
            d = torch.tensor((both.iloc[:, 0] - both.iloc[:, 1]).to_numpy(), dtype=torch.float64)
            lo, hi = bootstrap_ci(d, n_boot, seed)
            p = permutation_pvalue(float(d.mean().abs()), _sign_flip(d, n_boot, seed).abs())
            rows.append({"connector": f"{name} - {baseline}", "metric": metric,
                         "mean": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": p,
                         "n": len(d)})  # fmt: skip
    return pd.DataFrame(rows)


def baselines(folder: Path) -> pd.DataFrame:
    """Majority-class baselines of colour / shape that train_connector recorded (config.json)."""
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    held = config.get("training", {}).get("heldout", {})
    return pd.DataFrame([{"connector": "majority baseline", "metric": f"{attr}_accuracy",
                          "mean": held[attr]["majority_baseline"], "ci_low": NAN,
                          "ci_high": NAN, "p_value": NAN, "n": held["n"]}
                         for attr in ("colour", "shape") if attr in held])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    folders = {k: Path(v) for k, v in parse_assignments(args.connector, "--connector").items()}
    tables = {name: per_image(folder) for name, folder in folders.items()}
    result = pd.concat([compare(tables, args.baseline, args.bootstrap, args.seed),
                        baselines(folders[args.baseline])], ignore_index=True)  # fmt: skip
    out = kernel_table(args.out_dir, "connectors")
    atomic_write(out, lambda tmp: result.to_csv(tmp, index=False))
    write_manifest(args.out_dir, stage="compare_connectors", connectors=folders,
                   baseline=args.baseline, args=vars(args))  # fmt: skip
    for r in result.itertuples():
        print(f"  {r.connector:>24} {r.metric:<24} {r.mean:.3f} [{r.ci_low:.3f}, "
              f"{r.ci_high:.3f}] n={r.n}" + (f" p={r.p_value:.3f}" if r.p_value == r.p_value
                                              else ""))  # fmt: skip
    return 0


STAGE = Stage(
    name="compare_connectors",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [Path(v) for v in parse_assignments(a.connector, "--connector").values()],
    # the table, not the folder: train_kernel_align's tables may share --out_dir
    outputs=lambda a: [kernel_table(a.out_dir, "connectors")],
    description="connectors on two towers, held-out captions",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
