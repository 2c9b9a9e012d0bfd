"""Profile the main command (`python -m src.pipeline`) step by step: where each step's time goes.

    .venv/bin/python -m bench.profile_pipeline [pipeline flags] [--csv PATH] [--cprofile DIR]

Development size (a minute or two):
    .venv/bin/python -m bench.profile_pipeline --data /tmp/prof/data --results /tmp/prof/results \
        --figures /tmp/prof/figures --n_scenes 24 --shards 2 --caption_n 3 --perturb_n 2 \
        --recon_epochs 2 --caption_shard synth_01
The real measurement: the pipeline's defaults (on an idle machine, into an empty --data).

The steps of `src.pipeline.plan(...)` run in this process one by one, as the pipeline runs them.
Time is attributed by wrapping a small set of entry points per category; the clock runs for the
highest-priority category open on the call stack, so nested entries are never counted twice and
the categories of a step add up to its wall time:

    load     model construction: load_adapter / load_for_vectors / load_reference, any
             from_pretrained, EfficientNet weights, the BERTScore scorer, reconstructor loads
    decode   image files to model inputs: load_image (PIL decode, EXIF, RGB) and the preprocessors
             (resize, crop, normalise), and the wait for a DataLoader batch
    forward  the networks: every torch.nn.Module call, the adapters' encode / connect / generate,
             caption_loss, and backward passes (training steps count here)
    io       torch save/load, safetensors, pandas to_csv / read_csv, manifests and JSON
    metric   the functions of src.metrics (BERTScore's matching, kNN, CKA, bootstrap, ...)
    other    everything else (Python glue, tokenisation outside a metric, plotting, ...)

Priority (outermost to innermost does not matter, only rank): load > decode > forward > io >
metric, so the BERT forward inside BERTScore is forward, the torch.load inside a model load is
load. --cprofile DIR also writes each step's cProfile (DIR/<n>_<step>.prof) and prints its top
functions by own time, to look further into one category.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import importlib
import inspect
import io
import pkgutil
import pstats
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CATEGORIES = ("load", "decode", "forward", "io", "metric")  # highest priority first
COLUMNS = ("step", "wall_s", *CATEGORIES, "other")


@dataclass
class Attributor:
    """Exclusive time per category: at every entry or exit of a wrapped function the time since
    the last event goes to the highest-priority category that is open (or 'other')."""

    clock: Callable[[], float] = time.perf_counter
    open: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    totals: dict[str, float] = field(default_factory=dict)
    last: float = 0.0

    def reset(self) -> None:
        self.totals = dict.fromkeys((*CATEGORIES, "other"), 0.0)
        self.open = dict.fromkeys(CATEGORIES, 0)
        self.last = self.clock()

    def _tick(self) -> None:
        now = self.clock()
        current = next((c for c in CATEGORIES if self.open[c]), "other")
        self.totals[current] = self.totals.get(current, 0.0) + now - self.last
        self.last = now

    def enter(self, category: str) -> None:
        self._tick()
        self.open[category] += 1

    def leave(self, category: str) -> None:
        self._tick()
        self.open[category] -= 1

    def finish(self) -> dict[str, float]:
        self._tick()
        return dict(self.totals)

    def wrap(self, category: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.enter(category)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave(category)

        timed.__profiled__ = True  # type: ignore[attr-defined]
        return timed


class Patches:
    """Wrapped entry points, undone on exit. A module function is replaced wherever a loaded
    module binds it (`from x import f` copies the reference into the importer)."""

    def __init__(self, attributor: Attributor) -> None:
        self.a = attributor
        self.undo: list[tuple[Any, str, Any]] = []

    def _set(self, owner: Any, name: str, value: Any) -> None:
        self.undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    def function(self, category: str, module: str, name: str) -> None:
        """A module-level function, replaced in every loaded module that holds it."""
        original = getattr(importlib.import_module(module), name)
        if getattr(original, "__profiled__", False):
            return
        timed = self.a.wrap(category, original)
        for mod in list(sys.modules.values()):
            d = getattr(mod, "__dict__", None)
            if not isinstance(d, dict):
                continue
            for attr, value in list(d.items()):
                if value is original:
                    self._set(mod, attr, timed)

    def method(self, category: str, cls: type, name: str) -> None:
        """A method defined on cls (plain, classmethod or staticmethod)."""
        raw = cls.__dict__[name]
        if isinstance(raw, classmethod | staticmethod):
            if getattr(raw.__func__, "__profiled__", False):
                return
            self._set(cls, name, type(raw)(self.a.wrap(category, raw.__func__)))
        elif not getattr(raw, "__profiled__", False):
            self._set(cls, name, self.a.wrap(category, raw))

    def restore(self) -> None:
        for owner, name, value in reversed(self.undo):
            setattr(owner, name, value)
        self.undo.clear()


def _metric_modules() -> Iterator[Any]:
    import src.metrics

    for info in pkgutil.iter_modules(src.metrics.__path__):
        yield importlib.import_module(f"src.metrics.{info.name}")


def install(patches: Patches) -> None:
    """The entry points of each category (see the module docstring)."""
    import bert_score
    import pandas as pd
    import safetensors.torch
    import torch
    import transformers
    import transformers.models.auto.auto_factory

    import src.models.base
    import src.models.mini
    import src.models.reference
    import src.models.towers

    def methods(category: str, cls: type, *names: str) -> None:
        for n in names:
            if n in cls.__dict__:
                patches.method(category, cls, n)

    def subclasses(base: type) -> Iterator[type]:
        for c in base.__subclasses__():
            yield c
            yield from subclasses(c)

    # load
    for mod, name in [
        ("src.models", "load_adapter"),
        ("src.models", "load_for_vectors"),
        ("src.models.reference", "load_reference"),
        ("src.models.towers", "load_causal_lm"),
        ("src.models.scoring", "nll_model"),
        ("src.metrics.text", "_loaded_bert_scorer"),
    ]:
        patches.function("load", mod, name)
    for mod in ("src.training.recon", "src.recon"):
        with contextlib.suppress(ImportError, AttributeError):
            patches.function("load", mod, "load_recon")
    methods("load", src.models.towers.EfficientNetTokens, "__init__")
    methods("load", bert_score.BERTScorer, "__init__")
    methods("load", transformers.PreTrainedModel, "from_pretrained")
    methods("load", transformers.models.auto.auto_factory._BaseAutoModelClass, "from_pretrained")
    methods("load", transformers.PreTrainedTokenizerBase, "from_pretrained")
    # decode
    patches.function("decode", "src.data.images", "load_image")
    methods("decode", src.models.towers.SquareResize, "__call__")
    methods("decode", torch.utils.data.dataloader._BaseDataLoaderIter, "__next__")
    # forward: every module call (nested calls are one open category), the adapters' entry points
    methods("forward", torch.nn.Module, "__call__")
    methods("forward", torch.Tensor, "backward")
    methods("forward", src.models.mini.ComposedVLM, "generate", "caption_loss")
    for cls in subclasses(src.models.base.VLMAdapter):
        methods("forward", cls, "encode", "connect", "generate")
    for cls in subclasses(src.models.reference.ReferenceEncoder):
        methods("forward", cls, "encode")
    # io
    for mod, name in [("torch", "save"), ("torch", "load"),
                      ("src.data.io", "write_manifest"), ("src.data.io", "read_manifest"),
                      ("src.data.io", "write_json_atomic"), ("pandas", "read_csv")]:  # fmt: skip
        patches.function("io", mod, name)
    for name in ("load_file", "save_file"):
        patches.function("io", safetensors.torch.__name__, name)
    methods("io", pd.DataFrame, "to_csv")
    # metric: every function and scorer of src.metrics (their loads and forwards rank higher)
    for mod in _metric_modules():
        for name, obj in list(vars(mod).items()):
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj) and not inspect.isgeneratorfunction(obj):
                if not name.startswith("_"):
                    patches.function("metric", mod.__name__, name)
            elif inspect.isclass(obj) and "__call__" in obj.__dict__:
                patches.method("metric", obj, "__call__")


def top_functions(profile: cProfile.Profile, n: int) -> str:
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("tottime").print_stats(n)
    lines = buf.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


def slug(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower()


def get_args_parser() -> argparse.ArgumentParser:
    from src import pipeline

    p = pipeline.get_args_parser()
    p.prog = "python -m bench.profile_pipeline"
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--csv", type=Path, help="the table as CSV (default <results>/profile.csv)")
    p.add_argument("--cprofile", type=Path, help="also write each step's cProfile here")
    p.add_argument("--top", type=int, default=12, help="functions shown per step with --cprofile")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's). On a shared, loaded machine 1 avoids OpenMP "
        "threads waiting on each other's time slices (measured 30x slower generation at 2 threads "
        "under a load of 10 on 2 cores)",
    )
    p.add_argument("--steps", help="only steps whose title contains one of these (comma list)")
    return p


def main(argv: list[str] | None = None) -> int:
    import os

    import pandas as pd

    from src import pipeline

    args = get_args_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    attributor = Attributor()
    patches = Patches(attributor)
    rows = []
    stack = contextlib.ExitStack()
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        stack.enter_context(pipeline.shared_process())  # as src.pipeline.main runs the steps
        install(patches)
        wanted = args.steps.split(",") if args.steps else None
        for n, (title, stage_main, stage_argv) in enumerate(pipeline.plan(args)):
            if wanted and not any(w in title for w in wanted):
                continue
            print(f"== {title}", flush=True)
            prof = cProfile.Profile() if args.cprofile else None
            attributor.reset()
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            rc = stage_main(stage_argv)
            if prof:
                prof.disable()
            wall = time.perf_counter() - t0
            parts = attributor.finish()
            rows.append({"step": title, "wall_s": wall, **parts})
            if prof:
                args.cprofile.mkdir(parents=True, exist_ok=True)
                prof.dump_stats(args.cprofile / f"{n:02d}_{slug(title)}.prof")
                print(top_functions(prof, args.top))
            if rc != 0:
                print(f"step '{title}' failed with exit code {rc}", file=sys.stderr)
                return rc
    finally:
        patches.restore()
        stack.close()
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    total = table.drop(columns="step").sum()
    table = pd.concat([table, pd.DataFrame([{"step": "total", **total}])], ignore_index=True)
    with pd.option_context("display.width", 160, "display.max_colwidth", 40):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out = args.csv or args.results / "profile.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.3f")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
