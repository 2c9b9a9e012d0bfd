"""The one place that builds output paths: every writer and every reader calls these."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from src.errors import InputMissing, UserError

ChunkKind = Literal["pre", "post", "ref", "text"]
_CHUNK_RE = re.compile(r"^(pre|post|ref|text)_vectors_(\d+)\.pt$")


def vector_shard_dir(out_dir: Path, model: str, shard: str) -> Path:
    """data/vector/<model>/<shard>: one model's vectors for one image shard."""
    return Path(out_dir) / model / shard


def vector_dir(out_dir: Path, model: str) -> Path:
    """data/vector/<model>: one model's vectors, a folder per shard (vector_shard_dir)."""
    return Path(out_dir) / model


def reference_shard_dir(out_dir: Path, shard: str) -> Path:
    """data/clip_ref/<shard>: one reference encoder's embeddings for one image shard."""
    return Path(out_dir) / shard


def text_layer_dir(out_dir: Path, pool: str, layer: int) -> Path:
    """data/text/<model>/<pool>_L<layer>: extract_text's caption embeddings at one hidden-state
    index as given (-1 = the last), a folder per image shard holding text_vectors_<i>.pt."""
    return Path(out_dir) / f"{pool}_L{layer}"


def chunk_path(shard_dir: Path, kind: ChunkKind, index: int) -> Path:
    """<shard_dir>/<kind>_vectors_<index>.pt"""
    return Path(shard_dir) / f"{kind}_vectors_{index}.pt"


def list_chunk_indices(shard_dir: Path, kind: ChunkKind) -> list[int]:
    """Indices of the finished chunks of one kind, in numeric order (temp files are ignored)."""
    found = []
    for p in Path(shard_dir).glob(f"{kind}_vectors_*.pt"):
        m = _CHUNK_RE.match(p.name)
        if m:
            found.append(int(m.group(2)))
    return sorted(found)


def list_vector_shards(model_dir: Path) -> list[str]:
    """Shard names under a model's (or a reference's) vector folder, sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in model_dir.iterdir()
        if p.is_dir() and any(_CHUNK_RE.match(c.name) for c in p.iterdir())
    )


def shard_dirs(folder: Path, shards: list[str] | None = None) -> list[Path]:
    """Shard folders of a vector folder: a folder holding chunk files is itself one shard;
    otherwise its sub-folders with chunks are (only `shards`, when given)."""
    folder = Path(folder)
    if any(_CHUNK_RE.match(p.name) for p in folder.glob("*_vectors_*.pt")):
        return [folder]
    names = list_vector_shards(folder)
    if not names:
        raise InputMissing(f"no vector chunks under {folder}")
    if shards:
        missing = sorted(set(shards) - set(names))
        if missing:
            raise UserError(f"shard(s) {missing} not in {folder} (it has {', '.join(names)})")
        names = [n for n in names if n in shards]
    return [folder / n for n in names]


def recon_dir(root: Path, model: str) -> Path:
    """data/recon/<model>: a trained reconstructor (weights, config, statistics, checkpoint)."""
    return Path(root) / model


def connector_dir(root: Path, name: str) -> Path:
    """data/connector/<name>: a trained connector (connector.safetensors + config.json)."""
    return Path(root) / name


def connector_work_dir(root: Path, name: str) -> Path:
    """data/train_connector/<name>: train_connector's feature cache, checkpoint, evaluation."""
    return Path(root) / name


def connector_feature_dir(work_dir: Path, vision: str, grid: int, shard: str) -> Path:
    """<work_dir>/features/<vision>_g<grid>/<shard>: a frozen tower's cached tokens of a shard
    (a hub id's '/' becomes '--')."""
    return Path(work_dir) / "features" / f"{vision.replace('/', '--')}_g{grid}" / shard


def align_dir(root: Path, name: str) -> Path:
    """data/align/<name>: a trained dual encoder (dual_encoder.safetensors + .json, checkpoint,
    feature caches, manifest)."""
    return Path(root) / name


# Result tables (results/ or a committed copy such as sample/results): stages write them, plots
# read them, both through these.


def knn_results_dir(results: Path, model: str) -> Path:
    """results/knn/<model>: extract_knn's tables (knn.csv, cka.csv, spectra.csv, ...)."""
    return Path(results) / "knn" / model


def knn_table_path(out_dir: Path, table: str) -> Path:
    """<out_dir>/<table>.csv: one of extract_knn's tables (knn, cka, spectra, ...)."""
    return Path(out_dir) / f"{table}.csv"


def recon_results_dir(results: Path) -> Path:
    """results/recon: eval_recon's tables for every model."""
    return Path(results) / "recon"


def recon_table(out_dir: Path, model: str, suffix: str = ".csv") -> Path:
    """<out_dir>/recon_<model>.csv (a row per image and method) or .json (the summary)."""
    return Path(out_dir) / f"recon_{model}{suffix}"


def captions_results_dir(results: Path, model: str) -> Path:
    """results/captions/<model>: eval_captions' per-shard tables."""
    return Path(results) / "captions" / model


def scored_dir(caption_dir: Path) -> Path:
    """<caption_dir>/scored: score_captions' default output folder."""
    return Path(caption_dir) / "scored"


def perturb_results_dir(results: Path) -> Path:
    """results/perturb: score_perturb's tables (<model>/<mode>/<shard>.csv, summary.csv)."""
    return Path(results) / "perturb"


def caption_table(caption_dir: Path, shard: str) -> Path:
    """<caption_dir>/<shard>.csv: eval_captions' (or eval_perturb's) table of one shard."""
    return Path(caption_dir) / f"{shard}.csv"


def perturb_captions_dir(out_dir: Path, model: str, mode: str) -> Path:
    """<out_dir>/<model>/<mode>: eval_perturb's per-shard caption tables of one mode."""
    return Path(out_dir) / model / mode


def report_path(figures: Path) -> Path:
    """<figures>/report.html"""
    return Path(figures) / "report.html"


def plot_data_dir(out: Path) -> Path:
    """<out>/plots: one CSV of plotted values per figure."""
    return Path(out) / "plots"


def figure_png(figures: Path, name: str) -> Path:
    """<figures>/<name>.png"""
    return Path(figures) / f"{name}.png"


def figure_values(out: Path, name: str) -> Path:
    """<out>/plots/<name>.csv: the values a figure draws."""
    return plot_data_dir(out) / f"{name}.csv"


def summary_table(out: Path, suffix: str = ".csv") -> Path:
    """<out>/summary.csv (or .json): the study's headline numbers (compute_summary, report)."""
    return Path(out) / f"summary{suffix}"


# Imported datasets (src.extract.import_dataset): <out>/shard_<i>/<stem>.jpg + <stem>.txt.


def import_shard_name(index: int) -> str:
    """shard_00000, shard_00001, ...: the index-th block of --shard_size rows."""
    return f"shard_{index:05d}"


def import_shard_dir(out: Path, index: int) -> Path:
    """<out>/shard_<index>: one block of imported rows (and its manifest)."""
    return Path(out) / import_shard_name(index)


def imported_files(shard_dir: Path, row: int) -> tuple[Path, Path]:
    """(<shard_dir>/row_<row>.jpg, .txt): a row's image and its captions, keyed by row index,
    so a key names the dataset row it came from whatever the shard size."""
    stem = Path(shard_dir) / f"row_{row:09d}"
    return stem.with_suffix(".jpg"), stem.with_suffix(".txt")


def contrastive_results_dir(results: Path, name: str) -> Path:
    """results/contrastive/<name>: train_align's held-out tables (retrieval.csv, history.csv)."""
    return Path(results) / "contrastive" / name


def probe_results_dir(results: Path, name: str) -> Path:
    """results/probe/<name>: eval_probe's tables (zero_shot.csv, linear_probe.csv,
    retrieval.csv, summary.json)."""
    return Path(results) / "probe" / name


def align_results_dir(results: Path) -> Path:
    """results/align: the alignment suite's tables (seed A; src/eval/align_*)."""
    return Path(results) / "align"


def align_table(out_dir: Path, table: str) -> Path:
    """<out_dir>/<table>.csv: one of the alignment suite's tables (cka, coral, scores, ...)."""
    return Path(out_dir) / f"{table}.csv"


def align_speed_dir(results: Path) -> Path:
    """results/align/speed: align_speed's tables (speed.csv, speed_runs.csv)."""
    return align_results_dir(results) / "speed"


def embedding_maps_dir(results: Path) -> Path:
    """results/align/embedding_maps: embedding_maps' tables (coords, procrustes, rsa, rdm)."""
    return align_results_dir(results) / "embedding_maps"


def attention_maps_dir(results: Path) -> Path:
    """results/align/attention_maps: attention_maps' tables (patch similarities) and overlays."""
    return align_results_dir(results) / "attention_maps"


def kernel_feature_dir(work_dir: Path, role: str, tag: str, shard: str) -> Path:
    """<work_dir>/features/<role>_<tag>/<shard>: train_kernel_align's cached student prefix
    inputs (role 'student') or teacher pooled features (role 'teacher') of one shard."""
    return Path(work_dir) / "features" / f"{role}_{tag.replace('/', '--')}" / shard


def kernel_results_dir(results: Path) -> Path:
    """results/kernel_align: train_kernel_align's tables and the connector comparison."""
    return Path(results) / "kernel_align"


def kernel_table(out_dir: Path, name: str) -> Path:
    """<out_dir>/<name>.csv: history (per step), fit (least-squares fit), heldout, connectors."""
    return Path(out_dir) / f"{name}.csv"


# Sparse autoencoders (seed C): activation caches, trained SAEs, their result tables.


def activation_dir(root: Path, model: str) -> Path:
    """data/activations/<model>: cache_activations' residual-stream cache, a folder per shard."""
    return Path(root) / model


def activation_chunk(shard_dir: Path, layer: int, index: int) -> Path:
    """<shard_dir>/L<layer>_<index>.pt: one layer's token sets for one chunk of images."""
    return Path(shard_dir) / f"L{layer:03d}_{index}.pt"


def sae_dir(root: Path, model: str) -> Path:
    """data/sae/<model>: train_sae's SAEs, one sparsify folder per layer (sae_layer_dir)."""
    return Path(root) / model


def sae_layer_dir(folder: Path, layer: int) -> Path:
    """<folder>/layers.<layer>: sparsify's name for the SAE of decoder block <layer>."""
    return Path(folder) / f"layers.{layer}"


def sae_results_dir(results: Path) -> Path:
    """results/sae: sae_reconstruction's and sae_semantic's tables for every model."""
    return Path(results) / "sae"


def sae_table(out_dir: Path, table: str, model: str, suffix: str = ".csv") -> Path:
    """<out_dir>/<table>_<model>.csv: reconstruction / semantic (per layer and token set) or
    their per-image rows (<table>_images)."""
    return Path(out_dir) / f"{table}_{model}{suffix}"
