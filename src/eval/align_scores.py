"""Stage: EAS and ELAS, the seed's formulas (eas_seed, elas_seed: in-sample, saturating) beside
ours (every component on held-out images on a [0, 1] scale, real data-type labels, a text side
that matters, bootstrap CIs on the composite); src/metrics/alignment.py defines each term."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from src.align.spaces import add_space_args, input_paths, load_all, write_tables
from src.data.paths import align_table
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.eval.align_scores", description=__doc__)
    add_space_args(p)
    p.add_argument("--projector", default="linear", help="linear | mlp | mlp2 (ELAS's map)")
    p.add_argument("--dim", type=int, default=32, help="CORAL basis dimension")
    p.add_argument("--alpha", type=float, default=0.1, help="ridge / weight-decay strength")
    p.add_argument("--permutations", type=int, default=100, help="CORAL null pairings")
    p.add_argument("--bootstrap", type=int, default=200, help="held-out resamples for CIs")
    return p


def run(args: argparse.Namespace) -> int:
    from src.align.tables import score_rows

    t0 = time.perf_counter()
    vision, text = load_all(args)
    df = pd.DataFrame(score_rows(vision, text, args))
    write_tables(args.out_dir, "align_scores", {"scores": df}, args)
    print_headline(df)
    print(f"  align_scores: {len(df)} rows in {time.perf_counter() - t0:.1f}s")
    return 0


def print_headline(df: pd.DataFrame) -> None:
    wide = df.pivot_table(
        index=["encoder", "llm", "layer"], columns="score", values="value", sort=False
    )
    for (enc, llm, layer), r in wide.iterrows():
        print(
            f"  {enc} x {llm}@{layer}: EAS seed {r.eas_seed:.3f} ours {r.eas:.3f}; "
            f"ELAS seed {r.elas_seed:.3f} ours {r.elas:.3f}"
        )


STAGE = Stage(
    name="align_scores",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=input_paths,
    outputs=lambda a: [a.out_dir],
    on_skip=lambda a: print_headline(pd.read_csv(align_table(a.out_dir, "scores"))),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
