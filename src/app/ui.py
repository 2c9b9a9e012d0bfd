"""The Gradio page: one tab per entry of src.app.tabs, each figure with its values downloadable,
and the live-perturbation panel. Errors a user can cause are shown in the page, never as a trace."""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from src.app.gallery import Choice, read_upload
from src.app.live import LivePerturber
from src.app.tabs import TABS, Shown, Tab, tab_figures
from src.errors import UserError
from src.models.perturb import MODES

# What the level slider means per mode (eval_perturb's definitions), shown under it.
LEVEL_HELP = {
    "mask": "share of E_post tokens zeroed",
    "lowrank": "share of singular directions kept (1 = unchanged)",
    "noise": "noise power / signal power",
    "orthogonal": "rotation strength",
}


def _figure(shown: Shown, downloads: Path) -> None:
    """A figure, its caption and its values (table + CSV download), or the message."""
    if shown.plot is None:
        # escaped: messages name paths such as knn/<model>/knn.csv, which Markdown would eat
        gr.Markdown(f"**{shown.name}: not available.** {html.escape(shown.message or '')}",
                    elem_classes=["missing"])  # fmt: skip
        return
    plot = shown.plot
    gr.Markdown(f"### {plot.title}")
    gr.Plot(plot.figure, show_label=False, elem_id=f"fig-{plot.name}")
    gr.Markdown(plot.caption)
    csv = downloads / f"{plot.name}.csv"
    plot.data.to_csv(csv, index=False)
    with gr.Accordion(f"values of this figure ({len(plot.data)} rows)", open=False):
        gr.Dataframe(plot.data, max_height=300, elem_id=f"values-{plot.name}")
        gr.DownloadButton(f"download {csv.name}", value=str(csv))


def _pictures(results: Path, tab: Tab) -> None:
    """The pictures a stage drew (tab.images under results), or what to run to get them."""
    found = sorted(Path(results).glob(tab.images))
    if not found:
        gr.Markdown(f"**not available.** no {html.escape(tab.images)} under "
                    f"{html.escape(str(results))}: run {tab.needs}",
                    elem_classes=["missing"])  # fmt: skip
        return
    # "contain": the default "cover" crops the overlays' colour-bar labels
    gr.Gallery([str(p) for p in found], columns=3, height="auto", label=tab.title,
               object_fit="contain", elem_id="pictures")  # fmt: skip


def _live_panel(gallery: dict[str, Choice], perturber: LivePerturber) -> None:
    """Pick or upload an image, choose a perturbation and a level, caption both E_post."""
    gr.Markdown("## Live perturbation")
    first = next(iter(gallery), None)
    im0, refs0 = gallery[first].load() if first else (None, [])
    with gr.Row():
        with gr.Column(scale=1):
            pick = gr.Dropdown(list(gallery), value=first, label="image")
            upload = gr.File(label="or upload an image", type="filepath", elem_id="upload")
            image = gr.Image(im0, label="the image", type="pil", interactive=False, height=260,
                             elem_id="image")  # fmt: skip
            reference = gr.Textbox(" | ".join(refs0), label="reference caption",
                                   interactive=False)  # fmt: skip
        with gr.Column(scale=1):
            mode = gr.Radio(list(MODES), value="mask", label="perturbation of E_post")
            level = gr.Slider(0, 1, value=0.5, step=0.05, label="level",
                              info=LEVEL_HELP["mask"])  # fmt: skip
            with gr.Row():
                go = gr.Button("perturb and caption", variant="primary", elem_id="run")
                stop = gr.Button("cancel", elem_id="cancel")
            status = gr.Markdown(elem_id="status")
            clean = gr.Textbox(label="caption from E_post", elem_id="caption-clean")
            changed = gr.Textbox(label="caption from the perturbed E_post",
                                 elem_id="caption-perturbed")  # fmt: skip
            scores = gr.Dataframe(headers=["score", "value"], label="scores", elem_id="scores")
    key = gr.State(gallery[first].key if first else "")
    # The pixels themselves travel in a State: the Image component re-encodes what it shows.
    pixels = gr.State(im0)

    def show_pick(label: str | None):
        if not label:
            return None, None, "", "", ""
        choice = gallery[label]
        try:
            im, refs = choice.load()
        except UserError as e:
            return None, None, "", "", f"**error:** {html.escape(str(e))}"
        return im, im, " | ".join(refs), choice.key, ""

    def show_upload(path: str | None):
        if not path:
            return gr.update(), gr.update(), gr.update(), gr.update(), ""
        try:
            im, refs, k = read_upload(path)
        except UserError as e:
            return None, None, "", "", f"**error:** {html.escape(str(e))}"
        return im, im, " | ".join(refs), k, f"uploaded {Path(path).name}"

    # gradio finds the progress bar by this default argument (its documented pattern)
    def run(im, mode_, level_, key_, ref, progress=gr.Progress()):  # noqa: B008
        if im is None:
            return "**error:** pick or upload an image first", "", "", None
        if not perturber.loaded:
            progress(0.1, desc="loading the model (first request only)")
            perturber.adapter  # noqa: B018 (loads it, with the progress shown)
        progress(0.4, desc="captioning from E_post and from the perturbed E_post")
        refs = [r for r in ref.split(" | ") if r.strip()] if ref else []
        out = perturber.run(im, mode_, float(level_), key_ or "upload", refs)
        table = pd.DataFrame({"score": list(out.scores), "value": list(out.scores.values())})
        return (f"{mode_} at level {level_:g}: done", out.caption, out.perturbed_caption,
                table.round(4))  # fmt: skip

    shown = [image, pixels, reference, key, status]
    pick.change(show_pick, pick, shown)
    upload.change(show_upload, upload, shown)
    mode.change(lambda m: gr.update(info=LEVEL_HELP[m]), mode, level)
    event = go.click(run, [pixels, mode, level, key, reference], [status, clean, changed, scores])
    stop.click(lambda: "cancelled", None, status, cancels=[event])


def build_app(
    results: Path,
    gallery: dict[str, Choice],
    perturber: LivePerturber,
    tabs: tuple[Tab, ...] = TABS,
) -> gr.Blocks:
    """The page over `results` (figures drawn once, when the page is built)."""
    downloads = Path(tempfile.mkdtemp(prefix="bridgescope-app-"))
    with gr.Blocks(title="bridgescope", analytics_enabled=False) as demo:
        gr.Markdown(f"# bridgescope\nResults: `{results}`")
        for tab in tabs:
            with gr.Tab(tab.title):
                gr.Markdown(tab.intro)
                for shown in tab_figures(results, tab):
                    _figure(shown, downloads)
                if tab.images:
                    _pictures(results, tab)
                if tab.live:
                    _live_panel(gallery, perturber)
    return demo
