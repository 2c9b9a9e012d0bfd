"""The main job: the whole sample study on the offline VLMs (`mini`, `mini-gemma`), resumable.

sample data -> vectors -> references -> geometry -> reconstruction -> captions and perturbations
-> scores -> figures and report. Every step runs a stage's own main() with --skip_existing, so a
second run only checks the manifests and ends in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from src.cli import flags
from src.data.io import read_manifest
from src.data.paths import (
    align_speed_dir,
    attention_maps_dir,
    captions_results_dir,
    embedding_maps_dir,
    kernel_results_dir,
    knn_results_dir,
    list_vector_shards,
    perturb_results_dir,
    recon_results_dir,
    report_path,
    vector_shard_dir,
)
from src.data.sample import scene_shard
from src.errors import UserError
from src.eval import (
    align_speed,
    compare_connectors,
    eval_captions,
    eval_perturb,
    eval_probe,
    eval_recon,
    sae_reconstruction,
    sae_semantic,
    score_captions,
    score_perturb,
)
from src.extract import cache_activations, extract_clip, extract_knn, extract_vectors, make_sample
from src.models.reference import preferred_dtype
from src.models.towers import remember_pooled_features
from src.plot import attention_maps, embedding_maps, report
from src.runtime import csv_list, parse_assignments, retain_heap_memory
from src.train import export_recon, train_align, train_kernel_align, train_recon, train_sae

Step = tuple[str, Callable[[list[str]], int], list[str]]

# the SAE study's layers per model: four spread over SmolLM2's 30 blocks; mini-gemma's Gemma 3
# has 18, of which two (6 and 13, near the depths of mini's middle two), on the smaller
# --sae_*_others counts: its SAE steps cost more per layer than mini's (a 262k vocabulary)
SAE_LAYERS = "mini=3,11,19,27;mini-gemma=6,13"


def sae_layer_lists(text: str) -> dict[str, str]:
    """'mini=3,11;mini-gemma=2,8' -> {'mini': '3,11', 'mini-gemma': '2,8'}; an entry without
    'MODEL=' is stored under '' (every model without its own list)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        model, _, layers = part.rpartition("=")
        ints = csv_list(layers)
        if not ints or not all(x.isdigit() for x in ints):
            raise argparse.ArgumentTypeError(f"{part!r}: want MODEL=L,L,... (block indices)")
        if model.strip() in out:
            raise argparse.ArgumentTypeError(f"{part!r}: {model.strip() or 'a bare list'} twice")
        out[model.strip()] = ",".join(ints)
    return out


def sae_layers_of(lists: dict[str, str], model: str) -> str:
    """The --sae_layers list of one model (its own, else the bare one)."""
    if model in lists:
        return lists[model]
    if "" in lists:
        return lists[""]
    raise UserError(f"--sae_layers has no list for {model!r} (add ';{model}=L,L,...')")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.pipeline",
        description="Run the sample study on the offline VLMs (mini, mini-gemma), resumably.",
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="where every output goes")
    p.add_argument("--n_scenes", type=int, default=2000, help="synthetic scenes to generate")
    p.add_argument("--shards", type=int, default=4, help="synthetic scene shards")
    p.add_argument(
        "--models",
        default="mini,mini-gemma",
        help="models for extract_vectors, each studied and compared in every figure (default "
        "mini,mini-gemma: the two offline VLMs)",
    )
    p.add_argument(
        "--refs",
        type=csv_list,
        default=["craft-vgg16", "efficientnet-lite0", "minilm"],
        help="offline (or hub) reference spaces for extract_clip and the geometry (default "
        "craft-vgg16,efficientnet-lite0,minilm; efficientnet-lite0 is mini's own tower, so its "
        "agreement with E_pre is circular: craft-vgg16 is the independent image reference)",
    )
    p.add_argument(
        "--ref_max_images",
        type=ref_caps,
        default=ref_caps("craft-vgg16=100"),
        metavar="NAME=N,...",
        help="references embedded on only the first N images of each shard (default "
        "craft-vgg16=100: CRAFT's VGG trunk is the main job's costliest step where the CPU has "
        "no native bf16, 175 s in float32 for all 2,161 images on 2 cores; the geometry compares "
        "a reference on the images it has)",
    )
    p.add_argument(
        "--model_id",
        action="append",
        metavar="NAME=ID",
        help="hub id or local path per model, passed to extract_vectors",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="result tables")
    p.add_argument("--figures", type=Path, default=Path("figures"), help="figures and report")
    p.add_argument("--recon_epochs", type=int, default=15)
    p.add_argument("--caption_shard", default="synth_03", help="held-out shard to caption")
    p.add_argument("--caption_n", type=int, default=200, help="images captioned per variant")
    p.add_argument("--perturb_n", type=int, default=40, help="images per perturbation level")
    p.add_argument(
        "--caption_n_others",
        type=int,
        default=24,
        help="--caption_n for every model after the first in --models (its share of the time)",
    )
    p.add_argument(
        "--perturb_n_others",
        type=int,
        default=10,
        help="--perturb_n for every model after the first in --models",
    )
    p.add_argument(
        "--recon_epochs_others",
        type=int,
        default=6,
        help="--recon_epochs for every model after the first in --models",
    )
    p.add_argument(
        "--align_n",
        type=int,
        default=40,
        help="alignment suite: images per data type (first N of each --align_shards)",
    )
    p.add_argument(
        "--align_shards",
        default="charts,documents,photos,tables,synth_00",
        help="alignment suite: the sample shards it reads (one per data type)",
    )
    p.add_argument("--kernel_n", type=int, default=128, help="kernel alignment: train images")
    p.add_argument("--kernel_steps", type=int, default=60, help="kernel alignment: steps")
    p.add_argument("--align_epochs", type=int, default=30, help="train_align's epochs")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, help="decode workers (default: automatic)")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--sae_models", help="models of the SAE study (default: --models; '' skips it)")
    p.add_argument(
        "--sae_layers",
        type=sae_layer_lists,
        default=SAE_LAYERS,
        help="LLM layers of the SAE study per model: 'MODEL=L,L,...;MODEL=...', block indices "
        "from 0; a list without 'MODEL=' is every other model's (default '%(default)s')",
    )
    p.add_argument("--sae_images", type=int, default=64, help="held-out images measured")
    p.add_argument("--sae_texts", type=int, default=128, help="captions the SAEs train on")
    p.add_argument("--sae_nll_images", type=int, default=16, help="images for the delta-NLL")
    p.add_argument("--sae_images_others", type=int, default=24,
                   help="--sae_images for every SAE model after the first")  # fmt: skip
    p.add_argument("--sae_texts_others", type=int, default=32,
                   help="--sae_texts for every SAE model after the first")  # fmt: skip
    p.add_argument("--sae_nll_images_others", type=int, default=4,
                   help="--sae_nll_images for every SAE model after the first")  # fmt: skip
    p.add_argument("--align_n_samples", type=int, default=20,
                   help="embedding maps: images per data type")  # fmt: skip
    p.add_argument("--align_batch_sizes", type=int, nargs="+", default=[1, 4],
                   help="speed benchmark batch sizes")  # fmt: skip
    return p


def align_suite_steps(args: argparse.Namespace) -> list[Step]:
    """Seed A's suite on the offline encoders (EfficientNet-Lite0, CRAFT, mini's E_pre / E_post)
    and text models (SmolLM2, Gemma 3 270M at two layers; MiniLM) over --align_n images per data
    type: caption embeddings on that subset, then CKA, CORAL, EAS / ELAS and e2e."""
    from src.align.commands import Plan, eval_steps, text_steps, vision_steps

    data, shards = args.data, args.align_shards.split(",")
    plan = Plan(data / "sample", data / "align", args.results / "align", shards, args.align_n,
                args.device, args.no_progress, [-6, -1])  # fmt: skip
    # the offline image encoders: the reference step's vectors where it ran (the suite reads
    # its images' rows), else extracted on the subset
    encoders = ["efficientnet-lite0", "craft-vgg16"]
    extract, extracted = vision_steps(plan, [e for e in encoders if e not in args.refs])
    refs = {e: f"{e}:ref:{data / 'clip_ref' / e}" for e in encoders if e in args.refs}
    texts, text_specs = text_steps(plan, ["smollm2", "gemma3-270m", "minilm"])
    vec = data / "vector" / "mini"
    vision = [f"mini.pre:pre:{vec}", f"mini.post:post:{vec}"]
    vision += [refs.get(e) or extracted.pop(0) for e in encoders]
    # sized for the main job's budget (~70 s on 2 idle cores); the CLI's defaults are larger
    extra = {
        "align_compare": {"bootstrap": 100, "permutations": 100},
        "align_coral": {"permutations": 50},
        "align_scores": {"bootstrap": 100, "permutations": 30},
        "align_e2e": {"projectors": "linear,mlp", "steps": 100},
    }
    stages = ["align_compare", "align_coral", "align_scores", "align_e2e"]
    return extract + texts + eval_steps(plan, stages, vision, text_specs, extra)  # fmt: skip


def align_maps_steps(args: argparse.Namespace) -> list[Step]:
    """Seed A's speed benchmark (offline encoders, LLMs, mini's connector) and embedding maps
    (EfficientNet-Lite0, each model's E_post and the MiniLM caption space; t-SNE only: UMAP's
    first import compiles for tens of seconds). Attention maps are not planned: they need a
    joint image-text space, and none is installed offline until train_align lands."""
    spaces = [f"efficientnet-lite0={args.data / 'clip_ref' / 'efficientnet-lite0'}"]
    spaces += [f"E_post {m}={args.data / 'vector' / m}:post" for m in args.models.split(",")]
    spaces += [f"minilm={args.data / 'clip_ref' / 'minilm'}"]
    return [
        ("alignment speed", align_speed.main,
         flags(out_dir=align_speed_dir(args.results), batch_sizes=args.align_batch_sizes,
               warmup=1, iters=3, device=args.device, skip_existing=True)),
        ("embedding maps", embedding_maps.main,
         [a for s in spaces for a in ("--space", s)]
         + flags(root=args.data / "sample", out_dir=embedding_maps_dir(args.results),
                 n_samples=args.align_n_samples, method="tsne", bootstrap=200,
                 permutations=100, skip_existing=True)),
    ]  # fmt: skip


KERNEL_CONNECTORS = Path(__file__).resolve().parents[1] / "sample" / "kernel_connectors"
# connectors trained alike into SmolLM2 (scripts/kernel_connectors.sh, prefix_connector.sh)
COMPARED_CONNECTORS = {
    "original": KERNEL_CONNECTORS / "original",
    "kernel": KERNEL_CONNECTORS / "kernel",
    "prefix8": KERNEL_CONNECTORS.parent / "prefix_connector" / "prefix8",
}


def committed(path: Path) -> Path:
    """A committed input as the stages are given it: relative to the working directory where
    it lies below it (manifests keep arguments as given, so they stay portable)."""
    here = Path.cwd()
    return path.relative_to(here) if here in path.parents else path


def kernel_steps(args: argparse.Namespace) -> list[Step]:
    """Seed D (KUEA): a small kernel alignment of EfficientNet-Lite0 to CRAFT on the sample
    (--kernel_n training images of synth_00, the teacher CRAFT at 96 px), and the committed
    connectors (original vs kernel-aligned tower, sample/kernel_connectors; the dual encoder's
    8 prefix tokens, sample/prefix_connector) compared on their held-out captions."""
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
    found = {n: f for n, f in COMPARED_CONNECTORS.items() if (f / "eval").is_dir()}
    if {"original", "kernel"} <= set(found):
        steps.append(("connectors compared", compare_connectors.main,
                      [a for n, f in found.items() for a in ("--connector", f"{n}={committed(f)}")]
                      + flags(baseline="original", out_dir=out, skip_existing=True)))  # fmt: skip
    return steps


def sae_steps(args: argparse.Namespace) -> list[Step]:
    """Seed C on each of --sae_models: cache the residual stream of the held-out shard, train
    TopK SAEs on the captions of another shard, then reconstruction and semantic measures."""
    steps: list[Step] = []
    images, quiet = args.data / "sample", args.no_progress
    models = args.models if args.sae_models is None else args.sae_models
    for i, model in enumerate(csv_list(models)):
        layers = sae_layers_of(args.sae_layers, model)
        n_img, n_txt, n_nll = (
            (args.sae_images, args.sae_texts, args.sae_nll_images)
            if i == 0
            else (args.sae_images_others, args.sae_texts_others, args.sae_nll_images_others)
        )
        acts, saes = args.data / "activations", args.data / "sae"
        common = dict(model=model, layers=layers, device=args.device, skip_existing=True,
                      no_progress=quiet)  # fmt: skip
        measure = dict(acts_dir=acts / model, sae_dir=saes / model,
                       out_dir=args.results / "sae", **common)  # fmt: skip
        steps += [
            (f"activations {model}", cache_activations.main,
             flags(image_dir=images, shards=args.caption_shard, limit=n_img,
                   out_dir=acts, **common)),
            (f"SAEs {model}", train_sae.main,
             flags(image_dir=images, shards="synth_00", max_texts=n_txt,
                   out_dir=saes, **common)),
            (f"SAE reconstruction {model}", sae_reconstruction.main,
             flags(image_dir=images, shards=args.caption_shard, nll_images=n_nll,
                   **measure)),
            (f"SAE semantics {model}", sae_semantic.main, flags(**measure)),
        ]  # fmt: skip
    return steps


ATTENTION_TEXTS = ["a blue circle", "a white square", "a cup of coffee"]


def attention_images(args: argparse.Namespace) -> list[Path]:
    """The first two scenes of the held-out shard (numbered as make_sample numbers them) and a
    packaged photo: the images whose attention maps the main job draws."""
    n = args.n_scenes
    first = [i for i in range(n) if scene_shard(i, n, args.shards) == args.caption_shard][:2]
    scenes = [args.data / "sample" / args.caption_shard / f"scene_{i:06d}.jpg" for i in first]
    return [*scenes, args.data / "sample" / "photos" / "coffee.jpg"]


def align_steps(args: argparse.Namespace) -> list[Step]:
    """Seed E phase 1 on the offline default: a dual encoder (EfficientNet-Lite0 + MiniLM
    adapters, on the pooled features the efficientnet-lite0 reference step cached) and
    eval_probe of it (zero-shot, linear probe of the tower and of the joint space, retrieval);
    the same for the committed kernel-aligned tower (sample/kernel_connectors/tower, the one
    whose connector kernel_steps compares), trained and probed on the same images and splits."""
    images, common = args.data / "sample", dict(device=args.device, skip_existing=True,
                                                 no_progress=args.no_progress)  # fmt: skip
    towers = [("efficientnet-lite0_minilm", "efficientnet-lite0",
               args.data / "clip_ref" / "efficientnet-lite0")]  # fmt: skip
    if (KERNEL_CONNECTORS / "tower" / "tower.json").is_file():
        towers.append(("kernel-aligned_minilm", str(committed(KERNEL_CONNECTORS / "tower")), None))
    steps: list[Step] = []
    # the captions' MiniLM features, computed once (the first dual encoder's cache)
    text = args.data / "align" / towers[0][0] / "cache" / "text_minilm.pt"
    for i, (name, tower, cache) in enumerate(towers):
        dual = args.data / "align" / name
        cache = cache or dual / "cache" / "vision"  # train_align's own pass over the images
        reuse = dict(text_cache=text) if i else {}
        steps += [
            (f"dual encoder {name} (train_align)", train_align.main,
             flags(root=images, name=name, out_dir=dual, results=args.results, vision=tower,
                   vision_cache=cache, epochs=args.align_epochs, **reuse, **common)),
            (f"probe {name} (eval_probe)", eval_probe.main,
             flags(root=images, name=name, vision=f"{tower},{dual}", text=dual,
                   results=args.results, cache_dir=args.data / "probe_cache",
                   vision_cache=f"{tower}={cache}", **common)),
        ]  # fmt: skip
    dual = args.data / "align" / towers[0][0]
    # seed A's attention maps, in the joint space of the first dual encoder
    steps.append(("attention maps", attention_maps.main,
                  flags(image=attention_images(args), text=ATTENTION_TEXTS, model_id=dual,
                        out_dir=attention_maps_dir(args.results),
                        device=args.device, skip_existing=True)))  # fmt: skip
    return steps


def ref_caps(text: str) -> dict[str, int]:
    """'craft-vgg16=100,minilm=50' -> {'craft-vgg16': 100, 'minilm': 50} ('' -> {})."""
    try:
        caps = parse_assignments(csv_list(text), "--ref_max_images")
    except UserError as e:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(e)) from None
    for name, n in caps.items():
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError(f"--ref_max_images {name}={n}: N must be >= 1")
    return {name: int(n) for name, n in caps.items()}


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
    for ref in args.refs:
        steps.append((f"reference {ref}", extract_clip.main,
                      flags(root=images, out_dir=data / "clip_ref" / ref, model_id=ref,
                            dtype=preferred_dtype(ref), max_images=args.ref_max_images.get(ref),
                            **loader)))  # fmt: skip
    refs = [f"{ref}:{data / 'clip_ref' / ref}" for ref in args.refs]
    # No CLIP ships offline: captions are scored by their NLL under the model that wrote them,
    # given the image (its own stored E_post in <data>/vector/<model>), where that model is a
    # connector VLM (the scoring stages decide: src.models.scoring.scores_nll).
    nll = dict(nll_vec_root=data / "vector")
    for i, model in enumerate(args.models.split(",")):
        caption_n, perturb_n, epochs = (
            (args.caption_n, args.perturb_n, args.recon_epochs)
            if i == 0
            else (args.caption_n_others, args.perturb_n_others, args.recon_epochs_others)
        )
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
                   normalize=True, epochs=epochs, hidden_size=1024, num_layers=2,
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
                   compare_post_vs_recon=True, out_dir=captions, shard_limit=caption_n,
                   device=args.device, **held_out)),
            (f"score captions {model}", score_captions.main,
             flags(caption_dir=captions, skip_existing=True, **nll)),
        ]  # fmt: skip
        for mode, levels in (("mask", [0.25, 0.5, 0.75]), ("lowrank", [0.25, 0.0625, 0])):
            steps.append(
                (f"perturb {mode} {model}", eval_perturb.main,
                 flags(vec_dir=vec, image_dir=images, mode=mode, level=levels,
                       out_dir=perturbed, limit=perturb_n, device=args.device, **held_out))
            )  # fmt: skip
    steps.append(("score perturbations", score_perturb.main,
                  flags(perturb_dir=perturbed, out_dir=perturb_results_dir(args.results),
                        skip_existing=True, **nll)))  # fmt: skip
    steps += align_maps_steps(args)
    steps += kernel_steps(args)
    steps += sae_steps(args)
    steps += align_suite_steps(args)
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


@contextlib.contextmanager
def shared_process() -> Iterator[None]:
    """The process all steps run in: glibc keeps freed memory for reuse (the steps allocate the
    same large blocks again and again: retain_heap_memory), and the efficientnet-lite0 reference
    reuses the global average pool that extraction's forward just computed on the same pixels
    (towers.py says why)."""
    retain_heap_memory()
    with remember_pooled_features():
        yield


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    t_all = time.perf_counter()
    timings = []
    with shared_process():
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
