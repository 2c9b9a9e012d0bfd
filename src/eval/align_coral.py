"""Stage: CORAL between vision and text in one basis of equal dimension (text principal axes,
vision mapped there by ridge regression fitted on training images), channels standardised, on
held-out images with a shuffled-pairing null; the seed's CORAL (unit rows, separate PCAs,
1 / (1 + d)) beside it as coral_seed."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from src.align.spaces import add_space_args, input_paths, load_all, write_tables
from src.data.paths import align_table
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.eval.align_coral", description=__doc__)
    add_space_args(p)
    p.add_argument("--dim", type=int, default=32, help="dimension of the one basis")
    p.add_argument("--alpha", type=float, default=0.1, help="ridge strength (x mean row norm^2)")
    p.add_argument("--permutations", type=int, default=200, help="shuffled training pairings")
    return p


def run(args: argparse.Namespace) -> int:
    from src.align.tables import coral_rows

    t0 = time.perf_counter()
    vision, text = load_all(args)
    df = pd.DataFrame(coral_rows(vision, text, args))
    write_tables(args.out_dir, "align_coral", {"coral": df}, args)
    print_headline(df)
    print(f"  align_coral: {len(df)} rows in {time.perf_counter() - t0:.1f}s")
    return 0


def print_headline(df: pd.DataFrame) -> None:
    for (enc, llm, layer), g in df.groupby(["encoder", "llm", "layer"], sort=False):
        ours, seed = g[g.method == "coral"].iloc[0], g[g.method == "coral_seed"].iloc[0]
        print(
            f"  {enc} x {llm}@{layer}: CORAL {ours.distance:.4f} (null {ours.null_mean:.4f}, "
            f"p={ours.p_value:.3g}); seed similarity {seed.similarity:.6f}"
        )


STAGE = Stage(
    name="align_coral",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=input_paths,
    outputs=lambda a: [a.out_dir],
    on_skip=lambda a: print_headline(pd.read_csv(align_table(a.out_dir, "coral"))),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
