"""Reading the result tables that the plots and the summary draw on, with clear errors.

Every table lives where its stage wrote it (paths from src.data.paths), under one results folder:
`results/` after a run, or the committed copy in `sample/results/`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.data.paths import (
    align_speed_dir,
    align_table,
    captions_results_dir,
    embedding_maps_dir,
    kernel_results_dir,
    kernel_table,
    knn_results_dir,
    perturb_results_dir,
    recon_results_dir,
    recon_table,
    sae_results_dir,
    sae_table,
    scored_dir,
)
from src.errors import InputMissing


class MissingResults(InputMissing):
    """A table a plot needs is not in the results folder (the message says which stage makes it)."""


def _read(path: Path, stage: str) -> pd.DataFrame:
    if not path.exists():
        raise MissingResults(f"{path} not found: run {stage} first, or point --results elsewhere")
    return pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])


def knn_models(results: Path) -> list[str]:
    """Models with extract_knn tables: results/knn/<model>/knn.csv."""
    return sorted(p.parent.name for p in (Path(results) / "knn").glob("*/knn.csv"))


def caption_models(results: Path) -> list[str]:
    """Models with scored caption tables: results/captions/<model>/scored/summary.csv."""
    found = (Path(results) / "captions").glob("*/scored/summary.csv")
    return sorted(p.parent.parent.name for p in found)


def recon_models(results: Path) -> list[str]:
    """Models with eval_recon tables: results/recon/recon_<model>.csv."""
    found = recon_results_dir(results).glob("recon_*.csv")
    return sorted(p.stem.removeprefix("recon_") for p in found)


def knn_table(results: Path, model: str, name: str = "knn") -> pd.DataFrame:
    """One of extract_knn's tables (knn, cka, spectra, distance_corr) for one model."""
    return _read(knn_results_dir(results, model) / f"{name}.csv", "src.extract.extract_knn")


def recon_rows(results: Path, model: str) -> pd.DataFrame:
    """eval_recon's per-image rows: shard, key, split, method, mse_standardised, cosine."""
    return _read(recon_table(recon_results_dir(results), model), "src.eval.eval_recon")


def caption_rows(results: Path, model: str) -> pd.DataFrame:
    """score_captions' per-image rows of every shard (the scored eval_captions tables)."""
    folder = scored_dir(captions_results_dir(results, model))
    shards = sorted(p for p in folder.glob("*.csv") if p.name != "summary.csv")
    if not shards:
        raise MissingResults(f"no scored caption tables in {folder}: run src.eval.score_captions")
    return pd.concat([_read(p, "src.eval.score_captions") for p in shards], ignore_index=True)


def caption_summary(results: Path, model: str) -> pd.DataFrame:
    """score_captions' summary: score, mean, ci_low, ci_high, std, n."""
    folder = scored_dir(captions_results_dir(results, model))
    return _read(folder / "summary.csv", "src.eval.score_captions")


def perturb_summary(results: Path) -> pd.DataFrame:
    """score_perturb's summary: model, mode, level, score, mean, ci_low, ci_high, std, n."""
    return _read(perturb_results_dir(results) / "summary.csv", "src.eval.score_perturb")


def perturb_rows(results: Path, model: str, mode: str) -> pd.DataFrame:
    """score_perturb's per-image rows of one model and mode (all shards)."""
    folder = perturb_results_dir(results) / model / mode
    shards = sorted(folder.glob("*.csv"))
    if not shards:
        raise MissingResults(f"no scored perturbation tables in {folder}")
    return pd.concat([_read(p, "src.eval.score_perturb") for p in shards], ignore_index=True)


def align_speed_table(results: Path) -> pd.DataFrame:
    """align_speed's summary: a row per component, name and batch size."""
    return _read(align_table(align_speed_dir(results), "speed"), "src.eval.align_speed")


def embedding_maps_table(results: Path, name: str) -> pd.DataFrame:
    """One of embedding_maps' tables: coords, procrustes, rsa, rdm."""
    return _read(align_table(embedding_maps_dir(results), name), "src.plot.embedding_maps")


def align_retrieval(results: Path) -> pd.DataFrame:
    """train_align's held-out retrieval of every dual encoder (results/contrastive/<name>/
    retrieval.csv), with a `name` column: radius, direction, metric, value, CI, chance, n."""
    found = sorted((Path(results) / "contrastive").glob("*/retrieval.csv"))
    if not found:
        raise MissingResults(
            f"no results/contrastive/*/retrieval.csv in {results}: run train_align"
        )
    return pd.concat([_read(p, "src.train.train_align").assign(name=p.parent.name)
                      for p in found], ignore_index=True)  # fmt: skip


def probe_table(results: Path, table: str) -> pd.DataFrame:
    """One eval_probe table (zero_shot, linear_probe, retrieval) of every probe run, with a
    `name` column; empty when there is none (a run without a text tower has no zero-shot)."""
    found = sorted((Path(results) / "probe").glob(f"*/{table}.csv"))
    if not found:
        raise MissingResults(f"no results/probe/*/{table}.csv in {results}: run eval_probe")
    parts = [_read(p, "src.eval.eval_probe").assign(name=p.parent.name) for p in found
             if p.stat().st_size > 1]  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# Pictures a stage draws itself (not from a table a figure reads), kept with the tables so that
# the committed sample shows them too: attention_maps' overlays.
PICTURES = ("align/attention_maps/*.png",)


def pictures(results: Path) -> list[Path]:
    """The PICTURES under a results folder."""
    return sorted(p for pattern in PICTURES for p in Path(results).glob(pattern))


def input_tables(results: Path) -> list[Path]:
    """Every table the figures and the summary may read (manifests aside): their fingerprint
    tells whether a finished report is still up to date."""
    results = Path(results)
    found = []
    for folder in (
        "knn",
        "recon",
        "captions",
        "perturb",
        "kernel_align",
        "sae",
        "align",
        "contrastive",
        "probe",
    ):
        for p in (results / folder).rglob("*"):
            if p.is_file() and p.suffix in (".csv", ".json") and p.name != "manifest.json":
                found.append(p)
    return sorted(found)


def perturb_modes(results: Path) -> list[str]:
    """Perturbation modes in score_perturb's summary (none when it is missing)."""
    try:
        return sorted(perturb_summary(results)["mode"].unique())
    except MissingResults:
        return []


def align_stage_table(results: Path, stage: str, name: str) -> pd.DataFrame:
    """One of the alignment suite's tables: results/align/<stage>/<name>.csv (stage = compare,
    coral, scores, e2e)."""
    from src.data.paths import align_results_dir

    return _read(align_table(align_results_dir(results) / stage, name), f"src.eval.align_{stage}")


def kernel_align_table(results: Path, name: str) -> pd.DataFrame:
    """train_kernel_align's tables (history, fit, params, heldout) or compare_connectors'
    (connectors) under results/kernel_align."""
    stage = (
        "src.eval.compare_connectors" if name == "connectors" else "src.train.train_kernel_align"
    )
    return _read(kernel_table(kernel_results_dir(results), name), stage)


def sae_models(results: Path, table: str = "sae_reconstruction") -> list[str]:
    """Models with a table of the SAE stages: results/sae/<table>_<model>.csv."""
    found = sae_results_dir(results).glob(f"{table}_*.csv")
    return sorted(p.stem.removeprefix(f"{table}_") for p in found
                  if not p.stem.removeprefix(f"{table}_").startswith("images_"))  # fmt: skip


def sae_rows(results: Path, table: str, model: str) -> pd.DataFrame:
    """sae_reconstruction's (layer, tokens, fvu, l0, dead_share, delta_nll + CIs) or
    sae_semantic's (layer, measure, own, chance, diff + CIs) table of one model."""
    return _read(sae_table(sae_results_dir(results), table, model), f"src.eval.{table}")
