"""The main job: the whole sample study on the embedded `mini` model, resumable.

sample data -> vectors -> references -> geometry -> reconstruction -> captions and perturbations
-> scores -> figures and report. Every step runs a stage's own main() with --skip_existing, so a
second run only checks the manifests and ends in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from src.data.io import read_manifest
from src.data.paths import (
    captions_results_dir,
    kernel_results_dir,
    knn_results_dir,
    list_vector_shards,
    perturb_results_dir,
    recon_results_dir,
    report_path,
    vector_shard_dir,
)
from src.eval import (
    compare_connectors,
    eval_captions,
    eval_perturb,
    eval_probe,
    eval_recon,
    score_captions,
    score_perturb,
)
from src.extract import extract_clip, extract_knn, extract_vectors, make_sample
from src.models.towers import remember_pooled_features
from src.plot import report
from src.train import export_recon, train_align, train_kernel_align, train_recon

Step = tuple[str, Callable[[list[str]], int], list[str]]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.pipeline",
        description="Run the sample study on the embedded default model (mini), resumably.",
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="where every output goes")
    p.add_argument("--n_scenes", type=int, default=2000, help="synthetic scenes to generate")
    p.add_argument("--shards", type=int, default=4, help="synthetic scene shards")
    p.add_argument("--models", default="mini", help="models for extract_vectors (default mini)")
    p.add_argument(
        "--model_id",
        action="append",
        metavar="NAME=ID",
        help="hub id or local path per model, passed to extract_vectors",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="result tables")
    p.add_argument("--figures", type=Path, default=Path("figures"), help="figures and report")
    p.add_argument("--recon_epochs", type=int, default=20)
    p.add_argument("--caption_shard", default="synth_03", help="held-out shard to caption")
    p.add_argument("--caption_n", type=int, default=200, help="images captioned per variant")
    p.add_argument("--perturb_n", type=int, default=100, help="images per perturbation level")
    p.add_argument("--kernel_n", type=int, default=128, help="kernel alignment: train images")
    p.add_argument("--kernel_steps", type=int, default=60, help="kernel alignment: steps")
    p.add_argument("--align_epochs", type=int, default=30, help="train_align's epochs")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, help="decode workers (default: automatic)")
    p.add_argument("--no_progress", action="store_true")
    return p


def flags(**kw: object) -> list[str]:
    """flags(root=p, k=[1, 2], skip=True) -> ['--root', 'p', '--k', '1', '2', '--skip'];
    None and False drop out."""
    out: list[str] = []
    for k, v in kw.items():
        if v is None or v is False:
            continue
        if isinstance(v, list | tuple):
            out += [f"--{k}", *map(str, v)]
        else:
            out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out


KERNEL_CONNECTORS = Path(__file__).resolve().parents[1] / "sample" / "kernel_connectors"


def kernel_steps(args: argparse.Namespace) -> list[Step]:
    """Seed D (KUEA): a small kernel alignment of EfficientNet-Lite0 to CRAFT on the sample
    (--kernel_n training images of synth_00, the teacher CRAFT at 96 px), and the committed
    connector pair (original vs kernel-aligned tower, sample/kernel_connectors) compared on
    their held-out captions."""
    work, out = args.data / "kernel_align", kernel_results_dir(args.results)
    steps: list[Step] = [
        ("kernel alignment", train_kernel_align.main,
         flags(root=args.data / "sample", train_shards="synth_00", eval_shards=args.caption_shard,
               max_train=args.kernel_n, eval_n=64, teacher_size=96, clean_weight=0.001,
               penalty_weight=1.0, lr=1e-4, kernel_lr=1e-2,
               steps=args.kernel_steps, warmup=5, batch_size=32, fit_n=128,
               out_dir=work / "tower", work_dir=work / "work", tables_dir=out,
               device=args.device, skip_existing=True, no_progress=args.no_progress)),
    ]  # fmt: skip
    pair = [f"{n}={KERNEL_CONNECTORS / n}" for n in ("original", "kernel")]
    if all((KERNEL_CONNECTORS / n / "eval").is_dir() for n in ("original", "kernel")):
        steps.append(("kernel connectors compared", compare_connectors.main,
                      [a for p in pair for a in ("--connector", p)]
                      + flags(baseline="original", out_dir=out)))  # fmt: skip
    return steps


def align_steps(args: argparse.Namespace) -> list[Step]:
    """Seed E phase 1 on the offline default: a dual encoder (EfficientNet-Lite0 + MiniLM
    adapters, on the pooled features the efficientnet-lite0 reference step cached) and
    eval_probe of it (zero-shot, linear probe of the tower and of the joint space, retrieval)."""
    name = "efficientnet-lite0_minilm"
    images, dual = args.data / "sample", args.data / "align" / name
    cache = args.data / "clip_ref" / "efficientnet-lite0"
    common = dict(device=args.device, skip_existing=True, no_progress=args.no_progress)
    return [
        ("dual encoder (train_align)", train_align.main,
         flags(root=images, name=name, out_dir=dual, results=args.results, vision_cache=cache,
               epochs=args.align_epochs, **common)),
        ("probe the dual encoder (eval_probe)", eval_probe.main,
         flags(root=images, name=name, vision=f"efficientnet-lite0,{dual}", text=dual,
               results=args.results, cache_dir=args.data / "probe_cache",
               vision_cache=f"efficientnet-lite0={cache}", **common)),
    ]  # fmt: skip


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps of the sample study, each a stage's main() and its argv."""
    data, images = args.data, args.data / "sample"
    quiet = args.no_progress
    loader = dict(device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                  skip_existing=True, no_progress=quiet)  # fmt: skip
    steps: list[Step] = [
        ("sample data", make_sample.main,
         flags(out=images, n_scenes=args.n_scenes, shards=args.shards)),
        ("E_pre / E_post", extract_vectors.main,
         flags(root=images, out_dir=data / "vector", models=args.models, **loader)
         + [a for mid in args.model_id or [] for a in ("--model_id", mid)]),
    ]  # fmt: skip
    for ref in ("efficientnet-lite0", "minilm"):
        steps.append((f"reference {ref}", extract_clip.main,
                      flags(root=images, out_dir=data / "clip_ref" / ref, model_id=ref,
                            **loader)))  # fmt: skip
    refs = [f"{ref}:{data / 'clip_ref' / ref}" for ref in ("efficientnet-lite0", "minilm")]
    # No CLIP ships offline: score captions by their NLL under mini given the image instead.
    nll = {}
    if "mini" in args.models.split(","):
        nll = dict(nll_vec_dir=data / "vector" / "mini")
    for model in args.models.split(","):
        recon = data / "recon" / model
        common = dict(embed_model=model, skip_existing=True, no_progress=quiet)
        vec = data / "vector" / model
        steps += [
            (f"geometry {model}", extract_knn.main,
             flags(pre_pt=vec, post_pt=vec, out_dir=knn_results_dir(args.results, model),
                   device=args.device, skip_existing=True, no_progress=quiet,
                   svd_per_image_csv=True)
             + [a for r in refs for a in ("--ref", r)]),
        ]  # fmt: skip
        steps += [
            (f"reconstructor {model}", train_recon.main,
             flags(vec_dir=data / "vector" / model, out_dir=recon, model_type="mlp",
                   normalize=True, epochs=args.recon_epochs, hidden_size=1024, num_layers=2,
                   batch_size=32, device=args.device, **common)),
            (f"export reconstruction {model}", export_recon.main,
             flags(vec_root=data / "vector", model_dir=recon, out_base=data / "vector_recon",
                   device=args.device, **common)),
            (f"evaluate reconstruction {model}", eval_recon.main,
             flags(vec_root=data / "vector", model_dir=recon, recon_root=data / "vector_recon",
                   out_dir=recon_results_dir(args.results), split="all", **common)),
        ]  # fmt: skip
        captions, perturbed = captions_results_dir(args.results, model), data / "perturb_out"
        # the captioning stages read the model's identity from the vectors' manifests
        held_out = dict(shards=args.caption_shard, no_progress=quiet, skip_existing=True)
        steps += [
            (f"captions post vs reconstruction {model}", eval_captions.main,
             flags(vec_dir=vec, image_dir=images, model_path=recon,
                   compare_post_vs_recon=True, out_dir=captions, shard_limit=args.caption_n,
                   device=args.device, **held_out)),
            (f"score captions {model}", score_captions.main,
             flags(caption_dir=captions, skip_existing=True, **nll)),
        ]  # fmt: skip
        for mode, levels in (("mask", [0.25, 0.5, 0.75]), ("lowrank", [0.25, 0.0625, 0])):
            steps.append(
                (f"perturb {mode} {model}", eval_perturb.main,
                 flags(vec_dir=vec, image_dir=images, mode=mode, level=levels,
                       out_dir=perturbed, limit=args.perturb_n, device=args.device, **held_out))
            )  # fmt: skip
    steps.append(("score perturbations", score_perturb.main,
                  flags(perturb_dir=perturbed, out_dir=perturb_results_dir(args.results),
                        skip_existing=True, **nll)))  # fmt: skip
    steps += kernel_steps(args)
    steps += align_steps(args)
    steps.append(("figures and report", report.main,
                  flags(results=args.results, figures=args.figures, out=args.results,
                        skip_existing=True)))  # fmt: skip
    return steps


def summarise(args: argparse.Namespace) -> None:
    """What is on disk now, read from the manifests."""
    root = args.data / "vector"
    for model in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        shards = list_vector_shards(root / model)
        ms = [read_manifest(vector_shard_dir(root, model, s)) or {} for s in shards]
        n_ok = sum(m.get("n_ok", 0) for m in ms)
        n_skip = sum(m.get("n_skipped", 0) for m in ms)
        shapes = ms[0].get("shapes", {}) if ms else {}
        pre, post = shapes.get("pre", {}), shapes.get("post", {})
        print(
            f"  vectors/{model}: {n_ok} images in {len(shards)} shards ({n_skip} skipped); "
            f"E_pre {pre.get('tokens_max')} x {pre.get('dim')}, "
            f"E_post {post.get('tokens_max')} x {post.get('dim')} ({post.get('dtype')})"
        )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    t_all = time.perf_counter()
    timings = []
    # The steps share one process: the efficientnet-lite0 reference reuses the global average
    # pool that extraction's forward just computed on the same pixels (towers.py says why).
    with remember_pooled_features():
        for title, stage_main, stage_argv in plan(args):
            print(f"== {title}", flush=True)
            t0 = time.perf_counter()
            rc = stage_main(stage_argv)
            timings.append((title, time.perf_counter() - t0))
            if rc != 0:
                print(f"step '{title}' failed with exit code {rc}", file=sys.stderr)
                return rc
    print(
        f"== done in {time.perf_counter() - t_all:.0f}s "
        f"({', '.join(f'{t}: {s:.0f}s' for t, s in timings)})"
    )
    summarise(args)
    if report_path(args.figures).exists():
        print(f"  report: {report_path(args.figures)} (figures beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
