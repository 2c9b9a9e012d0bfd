"""Seed A's commands as plans of our stages: a command table (name -> step builder) and the
encoder / LLM registries behind --encoders and --llms.

A step is (title, stage main, argv), as in src.pipeline; a command's steps extract what it
needs first (each extraction resumes with --skip_existing) and then run its src/eval/align_*
stages. Outputs: vectors under <data>/align/n<N>/, tables under <output-dir>/<command stage>.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from src.cli import flags
from src.data.images import list_images, list_shards
from src.data.sample import data_type_of, read_label_file

Step = tuple[str, Callable[[list[str]], int], list[str]]

# seed A's encoder names -> hub ids (its config.yaml and README table)
SEED_ENCODERS: dict[str, str] = {
    "clip": "openai/clip-vit-base-patch32",
    "siglip": "google/siglip-base-patch16-224",
    "dinov2": "facebook/dinov2-base",
    "internvit": "OpenGVLab/InternViT-300M-448px",
    "paligemma": "google/paligemma-3b-pt-224",
}
OFFLINE_ENCODERS = ("efficientnet-lite0", "craft-vgg16")
OFFLINE_LLMS = ("smollm2", "gemma3-270m", "minilm")
DEFAULT_ENCODERS = ("efficientnet-lite0", "craft-vgg16", "mini.pre", "mini.post")


def select_shards(root: Path, n_per_type: int) -> list[str]:
    """Shards that give each data type about n images (first n of a shard, per --max_images):
    a shard's type is its first image's label; a type spread over several shards uses the first
    shards until it has n."""
    have: dict[str, int] = {}
    out = []
    for shard in list_shards(root):
        recs = list_images(root, shard)
        if not recs:
            continue
        t = data_type_of(read_label_file(recs[0].path)) or "unlabelled"
        if have.get(t, 0) < n_per_type:
            out.append(shard)
            have[t] = have.get(t, 0) + min(len(recs), n_per_type)
    return out


@dataclass
class Plan:
    """Where one suite run reads and writes, and the flags every stage shares."""

    root: Path
    work: Path  # <data>/align/n<N>: this run's vectors
    out: Path  # tables: <out>/<stage>
    shards: list[str]
    n: int
    device: str
    quiet: bool
    layers: list[int]

    def vision_dir(self, enc: str) -> Path:
        return self.work / "vision" / enc

    def text_dir(self, llm: str) -> Path:
        return self.work / "text" / llm


def vision_steps(plan: Plan, encoders: list[str]) -> tuple[list[Step], list[str]]:
    """Extraction steps and --vision specs: VLM.pre / VLM.post via extract_vectors, offline
    references and hub encoders (seed names or ids) via extract_clip."""
    from src.extract import extract_clip, extract_vectors

    common = dict(
        root=plan.root,
        shards=",".join(plan.shards),
        max_images=plan.n,
        device=plan.device,
        skip_existing=True,
        no_progress=plan.quiet,
    )
    steps, specs, vlms = [], [], []
    for enc in encoders:
        model, _, kind = enc.partition(".")
        if kind in ("pre", "post"):
            if model not in vlms:
                vlms.append(model)
                steps.append(
                    (
                        f"E_pre / E_post {model}",
                        extract_vectors.main,
                        flags(out_dir=plan.work / "vector", models=model, **common),
                    )
                )
            specs.append(f"{enc}:{kind}:{plan.work / 'vector' / model}")
        else:
            steps.append(
                (
                    f"vision {enc}",
                    extract_clip.main,
                    flags(
                        out_dir=plan.vision_dir(enc), model_id=SEED_ENCODERS.get(enc, enc), **common
                    ),
                )
            )
            specs.append(f"{enc}:ref:{plan.vision_dir(enc)}")
    return steps, specs


def text_steps(plan: Plan, llms: list[str]) -> tuple[list[Step], list[str]]:
    from src.extract import extract_text

    steps, specs = [], []
    for llm in llms:
        steps.append(
            (
                f"text {llm}",
                extract_text.main,
                flags(
                    root=plan.root,
                    out_dir=plan.text_dir(llm),
                    model=llm,
                    layers=plan.layers,
                    shards=",".join(plan.shards),
                    max_images=plan.n,
                    device=plan.device,
                    skip_existing=True,
                    no_progress=plan.quiet,
                ),
            )
        )
        specs.append(f"{llm}:{plan.text_dir(llm)}")
    return steps, specs


def eval_steps(
    plan: Plan, stages: list[str], vision: list[str], text: list[str], extra: dict[str, dict]
) -> list[Step]:
    """One step per alignment stage, all on the same spaces."""
    import importlib

    spaces = [a for v in vision for a in ("--vision", v)] + [a for t in text for a in ("--text", t)]
    steps = []
    for stage in stages:
        mod = importlib.import_module(f"src.eval.{stage}")
        argv = spaces + flags(
            root=plan.root,
            out_dir=plan.out / stage.removeprefix("align_"),
            skip_existing=True,
            no_progress=plan.quiet,
            **extra.get(stage, {}),
        )
        steps.append((stage.replace("_", " "), mod.main, argv))
    return steps


def suite_steps(
    plan: Plan,
    encoders: list[str],
    llms: list[str],
    stages: list[str],
    extra: dict[str, dict] | None = None,
) -> list[Step]:
    """Extraction for every encoder and LLM, then the given align_* stages."""
    vs, vspecs = vision_steps(plan, encoders)
    ts, tspecs = text_steps(plan, llms)
    return vs + ts + eval_steps(plan, stages, vspecs, tspecs, extra or {})


def _stages(*names: str) -> Callable[[argparse.Namespace, Plan], list[Step]]:
    def build(args: argparse.Namespace, plan: Plan) -> list[Step]:
        extra = {
            "align_compare": {"bootstrap": args.bootstrap, "permutations": args.permutations},
            "align_e2e": {"projectors": ",".join(args.projectors)},
        }
        return suite_steps(plan, args.encoders, args.llms, list(names), extra)

    return build


def _speed(args: argparse.Namespace, plan: Plan) -> list[Step]:
    """align_speed on the encoders it can time alone (towers and hub ids, not a VLM's E_pre /
    E_post) and the LLMs (MiniLM is no causal LM)."""
    from src.eval import align_speed
    from src.models.text_embed import MINILM_NAME, model_id_of

    encoders = [SEED_ENCODERS.get(e, e) for e in args.encoders if "." not in e]
    llms = [model_id_of(m) for m in args.llms if m != MINILM_NAME]
    return [("align speed", align_speed.main,
             flags(out_dir=plan.out / "speed", encoders=encoders, llms=llms,
                   batch_sizes=args.batch_sizes, root=plan.root, device=plan.device,
                   skip_existing=True))]  # fmt: skip


def _embedding(args: argparse.Namespace, plan: Plan) -> list[Step]:
    """The vision spaces extracted first, then embedding_maps over them."""
    from src.plot import embedding_maps

    steps, specs = vision_steps(plan, args.encoders)
    spaces = []
    for spec in specs:  # "<name>:<kind>:<path>" -> "<name>=<path>:<kind>"
        name, kind, path = spec.split(":", 2)
        spaces += ["--space", f"{name}={path}:{kind}"]
    argv = spaces + flags(root=plan.root, out_dir=plan.out / "embedding_maps", n_samples=plan.n,
                          method=args.method, skip_existing=True)  # fmt: skip
    return [*steps, ("embedding maps", embedding_maps.main, argv)]


def _attention(args: argparse.Namespace, plan: Plan) -> list[Step]:
    """attention_maps of --image with --text in --joint (a train_align folder or CLIP / SigLIP)."""
    from src.errors import UserError
    from src.plot import attention_maps

    if args.image is None:
        raise UserError("attention needs --image (and --text, default 'What is shown?')")
    joint = args.joint or (DEFAULT_JOINT if DEFAULT_JOINT.is_dir() else None)
    return [("attention maps", attention_maps.main,
             flags(image=args.image, text=args.text or "What is shown?", model_id=joint,
                   out_dir=plan.out / "attention_maps", device=plan.device))]  # fmt: skip


# the main job's offline dual encoder (src.pipeline.align_steps), the attention default
DEFAULT_JOINT = Path("data/align/efficientnet-lite0_minilm")

# command -> (what it does, builder)
COMMANDS: dict[str, tuple[str, Callable[..., list[Step]] | None]] = {
    "compare": (
        "CKA of encoders x LLMs (biased / unbiased / RBF, CIs, nulls)",
        _stages("align_compare"),
    ),
    "multi-llm": ("the CKA matrix across several LLMs and layers", _stages("align_compare")),
    "coral": (
        "CORAL in one fitted basis vs the seed's, and EAS",
        _stages("align_coral", "align_scores"),
    ),
    "elas": ("EAS / ELAS, the seed's formulas and ours (held-out, CIs)", _stages("align_scores")),
    "e2e": ("projectors, held-out retrieval, CKA-retrieval correlation", _stages("align_e2e")),
    "speed": ("latency / throughput / memory benchmark", _speed),
    "attention": ("patch-text similarity maps in a joint image-text space", _attention),
    "embedding": ("t-SNE / UMAP / Procrustes / RSA embedding maps", _embedding),
    "all": (
        "every command above but attention (it needs --image)",
        lambda args, plan: (
            _stages("align_compare", "align_coral", "align_scores", "align_e2e")(args, plan)
            + _speed(args, plan)
            + _embedding(args, plan)[-1:]
        ),
    ),
}
