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
from pathlib import Path

from src.data.io import atomic_write, write_json_atomic, write_manifest
from src.data.paths import sae_dir, sae_results_dir, sae_table
from src.models import MODEL_NAMES
from src.runtime import add_runtime_args, csv_list
from src.sae.cache import add_source_args
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.sae_reconstruction",
        description="FVU, L0, dead features and delta-NLL of SAEs per layer and token set.",
    )
    p.add_argument("--model", choices=MODEL_NAMES, default="mini")
    p.add_argument("--vlm_id", help="hub id or local path (default: the adapter's default)")
    p.add_argument(
        "--sae_dir", type=Path, help="folder of layers.<l> SAEs (default data/sae/<model>)"
    )
    p.add_argument("--layers", type=lambda s: [int(x) for x in csv_list(s)], required=True)
    add_source_args(p)
    p.add_argument("--nll_images", type=int, default=64, help="images for the delta-NLL (0: none)")
    p.add_argument("--out_dir", type=Path, default=sae_results_dir(Path("results")))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def _sae(a: argparse.Namespace) -> Path:
    return a.sae_dir or sae_dir(Path("data/sae"), a.model)


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
    coders = load_coders(_sae(args), args.layers, adapter.device if adapter else "cpu")
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
        out, stage="sae_reconstruction", model=args.model, sae_dir=_sae(args), args=vars(args)
    )
    shown = ["layer", "tokens", "fvu", "l0", "dead_share", "delta_nll"]
    print(df[[c for c in shown if c in df]].to_string(index=False))
    return 0


STAGE = Stage(
    name="sae_reconstruction",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [_sae(a)] + ([a.acts_dir] if a.acts_dir else []),
    outputs=lambda a: [sae_table(a.out_dir, "sae_reconstruction", a.model, ".json")],
    description="SAE reconstruction (FVU, L0, dead, delta-NLL) per layer and token set",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
