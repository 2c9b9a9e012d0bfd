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

TABS: tuple[Tab, ...] = STUDY_TABS


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
