"""Stage: CKA of vision x text spaces (biased / unbiased linear, RBF: any registered measure) per
data type and overall, with bootstrap CIs and permutation nulls: the encoders x LLMs x layers
matrix of seed A's compare / multi-llm commands."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from src.align.spaces import add_space_args, input_paths, load_all, write_tables
from src.data.paths import align_table
from src.runtime import csv_list
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.eval.align_compare", description=__doc__)
    add_space_args(p)
    p.add_argument(
        "--measures",
        type=csv_list,
        default=["cka_linear", "cka_linear_unbiased", "cka_rbf"],
        help="kernel measures of src.metrics.measures (comma-separated)",
    )
    p.add_argument("--bootstrap", type=int, default=500, help="image resamples for the CIs")
    p.add_argument("--permutations", type=int, default=500, help="shuffled pairings for nulls")
    return p


def run(args: argparse.Namespace) -> int:
    from src.align.tables import compare_rows

    t0 = time.perf_counter()
    vision, text = load_all(args)
    df = pd.DataFrame(compare_rows(vision, text, args))
    write_tables(args.out_dir, "align_compare", {"cka": df}, args)
    print_headline(df)
    print(f"  align_compare: {len(df)} rows in {time.perf_counter() - t0:.1f}s")
    return 0


def print_headline(df: pd.DataFrame) -> None:
    sel = df[(df["data_type"] == "all") & (df["measure"] == "cka_linear_unbiased")]
    for r in sel.itertuples():
        print(
            f"  {r.encoder} x {r.llm}@{r.layer}: unbiased CKA {r.value:.3f} "
            f"[{r.ci_low:.3f}, {r.ci_high:.3f}] (null 95% {r.null_q95:.3f}, n={r.n})"
        )


STAGE = Stage(
    name="align_compare",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=input_paths,
    outputs=lambda a: [a.out_dir],
    on_skip=lambda a: print_headline(pd.read_csv(align_table(a.out_dir, "cka"))),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
