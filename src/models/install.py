"""Set-up step: de-quantise the offline LMs' GGUF files into the project's cache, once.

`scripts/setup.sh` runs `python -m src.models.install` after the pip installs, so the first
stage that loads SmolLM2 or Gemma 3 finds a plain transformers folder (a load of seconds)
instead of parsing a GGUF (Gemma's 262k-entry vocabulary alone takes a minute or more on two
cores). The stages still convert on demand when the cache is gone. A no-op when up to date.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from src.models.towers import gemma3_dir, smollm2_dir

OFFLINE_LMS: dict[str, Callable[[], Path]] = {"smollm2": smollm2_dir, "gemma3-270m": gemma3_dir}


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m src.models.install",
        description="De-quantise the offline LMs (SmolLM2, Gemma 3 270M) into the cache.",
    ).parse_args(argv)
    for name, folder in OFFLINE_LMS.items():
        t0 = time.perf_counter()
        path = folder()
        print(f"  {name}: {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
