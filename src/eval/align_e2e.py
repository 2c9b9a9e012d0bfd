"""Stage: end-to-end check of seed A. Projectors (linear, MLP, 2-layer MLP) vision -> text fitted
on the training split; retrieval both ways (R@1/5/10, MRR; an image is found by a caption if any
of its captions ranks within k) on held-out images (and in-sample, the seed's defect, named);
the Spearman correlation of CKA with retrieval across encoders x LLMs x layers x data types,
with a bootstrap CI and a permutation p-value."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from src.align.spaces import add_space_args, input_paths, load_all, write_tables
from src.data.paths import align_table
from src.runtime import csv_list
from src.stage import Stage

CORRELATION_COLUMNS = [
    "cka",
    "retrieval",
    "n_points",
    "rho",
    "ci_low",
    "ci_high",
    "p_value",
    "permutations",
    "mean_abs_null",
]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.eval.align_e2e", description=__doc__)
    add_space_args(p)
    p.add_argument(
        "--projectors",
        type=csv_list,
        default=["linear", "mlp", "mlp2"],
        help="comma-separated: linear, mlp, mlp2 (the first gives the CKA points)",
    )
    p.add_argument("--alpha", type=float, default=0.1, help="ridge / weight-decay strength")
    p.add_argument("--steps", type=int, default=300, help="full-batch AdamW steps per MLP")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of points for the CI")
    p.add_argument("--permutations", type=int, default=1000, help="for the p-value")
    return p


def run(args: argparse.Namespace) -> int:
    from src.align.tables import correlation_rows, e2e_rows

    t0 = time.perf_counter()
    vision, text = load_all(args)
    rows, points = e2e_rows(vision, text, args)
    tables = {
        "retrieval": pd.DataFrame(rows),
        "cka_points": pd.DataFrame(points),
        # too few points (a tiny run): the table keeps its columns, and says so by being empty
        "correlation": pd.DataFrame(correlation_rows(points, args), columns=CORRELATION_COLUMNS),
    }
    write_tables(args.out_dir, "align_e2e", tables, args)
    print_headline(tables["retrieval"], tables["correlation"])
    print(f"  align_e2e: {len(rows)} rows in {time.perf_counter() - t0:.1f}s")
    return 0


def print_headline(ret: pd.DataFrame, corr: pd.DataFrame) -> None:
    sel = ret[(ret.data_type == "all") & (ret.metric == "R@5")]
    for split, g in sel.groupby("split"):
        print(
            f"  R@5 {split}: mean {g.value.mean():.3f} over {len(g)} (chance {g.chance.mean():.3f})"
        )
    for r in corr.itertuples():
        print(
            f"  Spearman({r.cka}, {r.retrieval}) = {r.rho:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            f" p={r.p_value:.3g} over {r.n_points} points"
        )


STAGE = Stage(
    name="align_e2e",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=input_paths,
    outputs=lambda a: [a.out_dir],
    on_skip=lambda a: print_headline(
        pd.read_csv(align_table(a.out_dir, "retrieval")),
        pd.read_csv(align_table(a.out_dir, "correlation")),
    ),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
