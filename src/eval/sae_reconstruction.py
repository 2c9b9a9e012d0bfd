"""Stage: how well text-trained SAEs reconstruct each token set, layer by layer: FVU (not raw
MSE: it compares across layers), L0 as a count, the share of dead features, and the caption
NLL change when the reconstruction replaces the image tokens' residual at that layer.

Activations from a cache (--acts_dir) or streamed from the model (--image_dir alone: nothing
written). CIs are percentile bootstraps over images. Writes <out_dir>/sae_reconstruction_<model>
.csv (per layer and token set), sae_reconstruction_images_<model>.csv (per image) and a JSON.
"""

from __future__ import annotations

import argparse
import sys

from src.data.io import atomic_write, write_json_atomic, write_manifest
from src.data.paths import sae_table
from src.sae.cache import add_measure_args, measured_sae_dir
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.sae_reconstruction",
        description="FVU, L0, dead features and delta-NLL of SAEs per layer and token set.",
    )

    def own() -> None:
        p.add_argument(
            "--nll_images", type=int, default=64, help="images for the delta-NLL (0: none)"
        )

    add_measure_args(p, own)
    return p


def run(args: argparse.Namespace) -> int:
    from src.sae.runs import (
        check_source,
        delta_nll,
        join_nll,
        load_coders,
        load_named_adapter,
        reconstruction_rows,
    )

    check_source(args)
    streaming = args.acts_dir is None
    adapter = load_named_adapter(args) if streaming or args.nll_images > 0 else None
    coders = load_coders(measured_sae_dir(args), args.layers, adapter.device if adapter else "cpu")
    rows, images = reconstruction_rows(args, adapter, coders)
    nll = delta_nll(args, adapter, coders) if adapter and args.nll_images > 0 else ({}, [])
    df, per_image = join_nll(rows, images, *nll)
    out = args.out_dir
    for table, frame in (("sae_reconstruction", df), ("sae_reconstruction_images", per_image)):
        atomic_write(sae_table(out, table, args.model), lambda t, f=frame: f.to_csv(t, index=False))
    write_json_atomic(
        sae_table(out, "sae_reconstruction", args.model, ".json"),
        {"model": args.model, "rows": df.to_dict("records"),
         "source": "stream" if streaming else "cache"},
    )  # fmt: skip
    write_manifest(
        out,
        stage="sae_reconstruction",
        model=args.model,
        sae_dir=measured_sae_dir(args),
        args=vars(args),
    )
    shown = ["layer", "tokens", "fvu", "l0", "dead_share", "delta_nll"]
    print(df[[c for c in shown if c in df]].to_string(index=False))
    return 0


STAGE = Stage(
    name="sae_reconstruction",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [measured_sae_dir(a)] + ([a.acts_dir] if a.acts_dir else []),
    outputs=lambda a: [sae_table(a.out_dir, "sae_reconstruction", a.model, ".json")],
    description="SAE reconstruction (FVU, L0, dead, delta-NLL) per layer and token set",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
