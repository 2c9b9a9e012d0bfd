"""What each tab of the app shows: figures of src.reporting.figures.all_plots by name (the
report's own figures, drawn by the same code from the same tables), with a short introduction."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from src.reporting.figures import Plot, all_plots
from src.reporting.tables import MissingResults


@dataclass(frozen=True)
class Tab:
    title: str
    intro: str  # markdown shown above the figures
    plots: tuple[str, ...]  # figure names, or fnmatch patterns over them ("perturb_*")
    live: bool = False  # the live-perturbation panel goes below the figures
    needs: str = ""  # the stage whose tables a pattern that matches nothing is waiting for
    images: str = ""  # a glob under the results folder of pictures a stage drew (overlays)


STUDY_TABS: tuple[Tab, ...] = (
    Tab("Geometry", "How much of E_pre's neighbourhood structure survives in E_post: kNN overlap "
        "against chance, CKA and effective rank per model (`extract_knn`).",
        ("knn", "erank_vs_ref")),
    Tab("Reconstruction", "Can E_pre be recovered from E_post, and do captions from the "
        "reconstruction match (`train_recon`, `eval_recon`, `eval_captions`)?",
        ("caption_recon", "caption_recon_pre")),
    Tab("Captions & perturbations", "Captions from perturbed E_post (`eval_perturb`, "
        "`score_perturb`). Below: perturb one image's E_post live and watch its caption.",
        ("perturb_*",), live=True, needs="src.eval.score_perturb"),
)  # fmt: skip

# Seed A's six tabs, on the alignment suite's corrected measures (its formulas shown beside them
# under their own names where the figure has them).
SEED_A_TABS: tuple[Tab, ...] = (
    Tab("Inference Speed", "Latency p50/p95, throughput and peak memory net of the weights per "
        "encoder, LLM and projector and batch size (`align_speed`).", ("align_speed",),
        needs="src.eval.align_speed"),
    Tab("Attention Maps", "Patch-text similarity in a joint image-text space (offline: the "
        "`train_align` dual encoder; CLIP / SigLIP by id), overlaid on the part of the image the "
        "processor kept (`attention_maps`).", (), needs="src.plot.attention_maps",
        images="align/attention_maps/*.png"),
    Tab("Alignment Analysis", "CKA between vision and caption embeddings (biased and unbiased "
        "linear, RBF), encoders x LLMs x layers, with CIs and the shuffled-pairing null.",
        ("align_cka",)),
    Tab("Embedding Space", "t-SNE / UMAP maps coloured by label, Procrustes after one shared "
        "map, and representational similarity (`embedding_maps`).",
        ("embedding_maps_*", "align_rsa"), needs="src.plot.embedding_maps"),
    Tab("CORAL / EAS", "CORAL in one fitted basis against its null, beside the seed's formula; "
        "EAS and ELAS as the seed defines them and corrected on held-out images.",
        ("align_coral", "align_scores")),
    Tab("E2E Validation", "Retrieval through a projector trained on a training split, scored "
        "both ways on held-out images, and how CKA predicts it across many points.",
        ("align_retrieval", "align_cka_retrieval")),
)  # fmt: skip

# The other seeds' parts: alignment training (seeds E and D) and SAE features (seed C).
SEED_TABS: tuple[Tab, ...] = (
    Tab("Alignment training", "Contrastive MRL adapters between frozen towers (`train_align`): "
        "held-out retrieval per radius and probes against chance (`eval_probe`); kernel "
        "alignment of EfficientNet-Lite0 to CRAFT (`train_kernel_align`).",
        ("contrastive_retrieval", "probe_accuracy", "kernel_align", "kernel_connectors")),
    Tab("SAE features", "Text-trained SAEs on the LLM's residual stream, layer by layer: FVU, "
        "L0, delta-NLL and the image-caption feature overlap against chance.",
        ("sae_reconstruction", "sae_semantic")),
)  # fmt: skip

TABS: tuple[Tab, ...] = STUDY_TABS + SEED_A_TABS + SEED_TABS


@dataclass
class Shown:
    """One figure slot of a tab: the Plot, or the message saying why there is none."""

    name: str
    plot: Plot | None = None
    message: str | None = None


def tab_figures(results: Path, tab: Tab) -> list[Shown]:
    """Draw a tab's figures from `results`; a missing table becomes a message naming it."""
    makers = dict(all_plots(Path(results)))
    shown: list[Shown] = []
    for pattern in tab.plots:
        names = [n for n in makers if fnmatch(n, pattern)]
        if not names:
            hint = f": run {tab.needs}" if tab.needs else ""
            shown.append(Shown(pattern, message=f"no tables for the figures {pattern!r} under "
                                                f"{results}{hint}"))  # fmt: skip
        for name in names:
            try:
                shown.append(Shown(name, plot=makers[name]()))
            except MissingResults as e:
                shown.append(Shown(name, message=str(e)))
    return shown
