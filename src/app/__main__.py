"""`python -m src.app`: the web app on localhost (see src/app/ui.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.data.io import REPO_ROOT
from src.errors import UserError

DEFAULT_RESULTS = REPO_ROOT / "sample" / "results"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.app",
        description="The study's figures and seed A's tabs over a results folder, and live "
        "perturbation of an image's E_post with mini, in a Gradio page.",
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (0.0.0.0 exposes the page to your network)")  # fmt: skip
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help="a results folder (default: the committed sample/results)")  # fmt: skip
    p.add_argument("--images", type=Path, default=Path("data/sample"),
                   help="an image folder to pick images from, when it exists")  # fmt: skip
    p.add_argument("--model", default="mini", help="the VLM of the live perturbation")
    p.add_argument("--model_id", help="its hub id or local path (default: the adapter's)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--share",
        action="store_true",
        help="also serve through a public gradio.live link (off by default)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from src.app.gallery import build_gallery
    from src.app.live import LivePerturber
    from src.app.ui import build_app

    try:
        if not args.results.is_dir():
            raise UserError(f"--results {args.results}: no such folder")
        demo = build_app(args.results, build_gallery(args.images),
                         LivePerturber(args.model, args.model_id, args.device))  # fmt: skip
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    demo.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
