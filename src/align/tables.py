"""The alignment suite's tables, one function per stage: rows of tidy dicts over every pair
(vision space x text space), computed from src.metrics (measures looked up by name)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from src.align.projectors import fit_projector
from src.align.spaces import Space, data_types, held_out, match, type_subsets
from src.metrics import alignment as al
from src.metrics.measures import bootstrap_kernel, centred_ci, get_measure, permutation_tests
from src.metrics.retrieval import retrieval_metrics
from src.metrics.similarity import linear_cka
from src.metrics.stats import bootstrap_spearman, spearman


def pairs(vision: list[Space], text: list[Space], args: argparse.Namespace) -> Iterator[dict]:
    """Each (vision, text) pair on the images both have: matched rows, labels, the split."""
    bar = tqdm(total=len(vision) * len(text), desc="pairs", disable=args.no_progress)
    for v in vision:
        for t in text:
            keys, iv, it = match(v, t)
            yield {
                "v": v,
                "t": t,
                "keys": keys,
                "x": v.x[iv].double(),
                "y": t.x[it].double(),
                "caps": [t.captions[i] for i in it.tolist()] if t.captions else None,
                "types": data_types(args.root, keys),
                "test": held_out(keys, args.test_frac, args.seed),
                "ids": {"encoder": v.name, "llm": t.name, "layer": t.layer},
            }
            bar.update(1)
    bar.close()


def _quantile(v: Tensor, q: float) -> float:
    return float(torch.quantile(v.double(), q)) if v.numel() else float("nan")


def compare_rows(vision: list[Space], text: list[Space], args: argparse.Namespace) -> list[dict]:
    """CKA (every --measures entry) per data type and overall, all images of the pair, with a
    bootstrap CI (image resamples) and the permutation null (shuffled pairing)."""
    rows = []
    for p in pairs(vision, text, args):
        everyone = torch.ones(len(p["keys"]), dtype=torch.bool)
        subsets = list(type_subsets(p["types"], everyone, args.min_per_type))
        # every measure's null per subset at once: the linear estimators share their permutations
        tests = {dtype: permutation_tests(args.measures, p["x"][idx], p["y"][idx],
                                          n_perm=args.permutations, seed=args.seed)
                 for dtype, idx in subsets}  # fmt: skip
        for name in args.measures:
            m = get_measure(name)
            for dtype, idx in subsets:
                x, y = p["x"][idx], p["y"][idx]
                boot = bootstrap_kernel(m, m.gram(x), m.gram(y), args.bootstrap, args.seed)
                test = tests[dtype][name]
                lo, hi = centred_ci(test.observed, boot)
                rows.append(
                    {
                        **p["ids"],
                        "data_type": dtype,
                        "measure": name,
                        "n": len(idx),
                        "value": test.observed,
                        "ci_low": lo,
                        "ci_high": hi,
                        "null_mean": float(test.null.mean()),
                        "null_q95": _quantile(test.null, 0.95),
                        "p_value": test.p_value,
                    }
                )
    return rows


def coral_rows(vision: list[Space], text: list[Space], args: argparse.Namespace) -> list[dict]:
    """Our CORAL (one fitted basis, held-out images, shuffled-pairing null) beside the seed's."""
    rows = []
    for p in pairs(vision, text, args):
        te = p["test"]
        tr = ~te
        c = al.coral_test(
            p["x"][tr],
            p["y"][tr],
            p["x"][te],
            p["y"][te],
            dim=args.dim,
            alpha=args.alpha,
            n_perm=args.permutations,
            seed=args.seed,
        )
        s = al.coral_seed(p["x"], p["y"])
        base = {**p["ids"], "n_train": int(tr.sum()), "n_test": int(te.sum())}
        rows.append(
            {
                **base,
                "method": "coral",
                "dim": c.dim,
                "distance": c.distance,
                "similarity": c.similarity,
                "null_mean": float(c.null.mean()),
                "null_q05": _quantile(c.null, 0.05),
                "p_value": c.p_value,
            }
        )
        rows.append(
            {
                **base,
                "method": "coral_seed",
                "dim": s.dim,
                "distance": s.distance,
                "similarity": s.similarity,
                "null_mean": float("nan"),
                "null_q05": float("nan"),
                "p_value": float("nan"),
            }
        )
    return rows


def _components(p: dict, args: argparse.Namespace) -> tuple[dict, dict, callable]:
    """Seed EAS / ELAS components and ours; `boot(idx)` recomputes ours on held-out rows idx."""
    te, types = p["test"], p["types"]
    tr = ~te
    x, y = p["x"], p["y"]
    # the seed: everything on all images (EAS) or on the training split (ELAS), unit text rows
    yu = torch.nn.functional.normalize(y, dim=-1)
    proj_s = fit_projector(args.projector, x[tr], yu[tr], alpha=args.alpha, seed=args.seed)
    pred_tr = proj_s.sy.mean + proj_s(x[tr]) * proj_s.sy.std  # back in unit-text units
    pred_te = proj_s.sy.mean + proj_s(x[te]) * proj_s.sy.std
    seed = {
        "cka": linear_cka(x, y),
        "coral_sim": al.coral_seed(x, y).similarity,
        "disc": al.fisher_discriminability_seed(x, types),
        "cka_train": linear_cka(pred_tr, yu[tr]),
        "mse_train": float((pred_tr - yu[tr]).square().mean()),
        "mse_test": float((pred_te - yu[te]).square().mean()),
        "cos_train": float(torch.nn.functional.cosine_similarity(pred_tr, yu[tr]).mean()),
    }
    # ours: one map, every component on held-out images
    proj = fit_projector(args.projector, x[tr], y[tr], alpha=args.alpha, seed=args.seed)
    zx, zy = proj(x[te]), proj.target(y[te])
    r2_train = al.r2_score(proj(x[tr]), proj.target(y[tr]))
    ct = al.coral_test(
        x[tr],
        y[tr],
        x[te],
        y[te],
        dim=args.dim,
        alpha=args.alpha,
        n_perm=args.permutations,
        seed=args.seed,
    )
    basis = al.fit_basis(x[tr], y[tr], args.dim, args.alpha)
    zy_tr = basis.text(y[tr])
    lab_tr = [v for v, m in zip(types, tr.tolist(), strict=True) if m]
    lab_te = [v for v, m in zip(types, te.tolist(), strict=True) if m]

    def ours(idx: Tensor) -> dict:
        xs, ys, labs = x[te][idx], y[te][idx], [lab_te[i] for i in idx.tolist()]
        dist = al.coral_in_basis(basis, xs, ys)
        return {
            "cka_u": al.cka_unbiased(xs, ys),
            "coral_sim": al.coral_similarity(dist, ct.null),
            "label_acc": al.label_accuracy(basis.vision(xs), zy_tr, lab_tr, labs),
            "r2_test": al.r2_score(zx[idx], zy[idx]),
            "r2_train": r2_train,
            "cos_gap": al.cos_gap(zx[idx], zy[idx], args.seed),
        }

    return seed, ours(torch.arange(int(te.sum()))), ours


def score_rows(vision: list[Space], text: list[Space], args: argparse.Namespace) -> list[dict]:
    """EAS and ELAS: the seed's formulas and ours (held-out, [0, 1], bootstrap CI)."""
    rows = []
    for p in pairs(vision, text, args):
        seed, ours, redo = _components(p, args)
        n_te = int(p["test"].sum())
        g = torch.Generator().manual_seed(args.seed)
        draws = [redo(torch.randint(n_te, (n_te,), generator=g)) for _ in range(args.bootstrap)]
        comp = {
            "eas_seed": (al.eas_seed(seed["cka"], seed["coral_sim"], seed["disc"]), None),
            "elas_seed": (
                al.elas_seed(
                    seed["cka_train"], seed["mse_train"], seed["mse_test"], seed["cos_train"]
                ),
                None,
            ),
            "eas": (
                al.eas_ours(ours["cka_u"], ours["coral_sim"], ours["label_acc"]),
                [al.eas_ours(d["cka_u"], d["coral_sim"], d["label_acc"]) for d in draws],
            ),
            "elas": (
                al.elas_ours(ours["cka_u"], ours["r2_test"], ours["r2_train"], ours["cos_gap"]),
                [
                    al.elas_ours(d["cka_u"], d["r2_test"], d["r2_train"], d["cos_gap"])
                    for d in draws
                ],
            ),
        }
        for score, (value, boot) in comp.items():
            b = torch.tensor(boot or [], dtype=torch.float64)
            parts = seed if score.endswith("_seed") else ours
            # resampled duplicates bias the CKA term: the spread, centred on the value, in [0, 1]
            lo, hi = (al.clip01(v) for v in centred_ci(value, b)) if b.numel() else (np.nan,) * 2
            rows.append(
                {
                    **p["ids"],
                    "score": score,
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_test": n_te,
                    **{f"c_{k}": v for k, v in parts.items()},
                }
            )
    return rows


def e2e_rows(vision: list[Space], text: list[Space], args) -> tuple[list[dict], list[dict]]:
    """Retrieval through each projector (trained on the training split) on held-out images and,
    to show the seed's defect, on the training images themselves; per data type and overall.
    Also each point's held-out unbiased CKA, for the CKA-retrieval correlation."""
    rows, points = [], []
    for p in pairs(vision, text, args):
        tr = ~p["test"]
        for kind in args.projectors:
            proj = fit_projector(
                kind, p["x"][tr], p["y"][tr], alpha=args.alpha, seed=args.seed, steps=args.steps
            )
            for split, mask in (("held_out", p["test"]), ("in_sample", tr)):
                for dtype, idx in type_subsets(p["types"], mask, args.min_per_type):
                    caps = [proj.target(p["caps"][i]) for i in idx.tolist()]
                    owner = torch.repeat_interleave(
                        torch.arange(len(caps)), torch.tensor([len(c) for c in caps])
                    )
                    base = {
                        **p["ids"],
                        "projector": kind,
                        "split": split,
                        "data_type": dtype,
                        "n_images": len(idx),
                        "n_captions": len(owner),
                    }
                    res = retrieval_metrics(proj(p["x"][idx]), torch.cat(caps), owner)
                    rows += [{**base, **r} for r in res]
                    # points: one per data type (the 'all' row overlaps them)
                    if split == "held_out" and kind == args.projectors[0] and dtype != "all":
                        mrr = [r["value"] - r["chance"] for r in res if r["metric"] == "MRR"]
                        points.append(
                            {
                                **base,
                                "cka_u": al.cka_unbiased(p["x"][idx], p["y"][idx]),
                                "cka_biased": linear_cka(p["x"][idx], p["y"][idx]),
                                "mrr_above_chance": sum(mrr) / len(mrr),
                            }
                        )
    return rows, points


def correlation_rows(points: list[dict], args) -> list[dict]:
    """Spearman of CKA with retrieval across points, bootstrap CI and permutation p-value."""
    out = []
    y = torch.tensor([q["mrr_above_chance"] for q in points], dtype=torch.float64)
    for cka in ("cka_u", "cka_biased"):
        x = torch.tensor([q[cka] for q in points], dtype=torch.float64)
        ok = torch.isfinite(x) & torch.isfinite(y)
        if int(ok.sum()) < 4:
            continue
        s = bootstrap_spearman(x[ok], y[ok], n_boot=args.bootstrap, seed=args.seed)
        g = torch.Generator().manual_seed(args.seed + 1)
        xs, ys = x[ok], y[ok]
        null = torch.tensor(
            [
                spearman(xs, ys[torch.randperm(len(ys), generator=g)])
                for _ in range(args.permutations)
            ]
        )
        p = (int((null.abs() >= abs(s["rho"])).sum()) + 1) / (len(null) + 1)
        out.append(
            {
                "cka": cka,
                "retrieval": "mrr_above_chance",
                "n_points": s["n"],
                "rho": s["rho"],
                "ci_low": s["ci_low"],
                "ci_high": s["ci_high"],
                "p_value": p,
                "permutations": len(null),
                "mean_abs_null": float(null.abs().mean()),
            }
        )
    return out
