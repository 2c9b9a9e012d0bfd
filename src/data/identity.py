"""Model identity read from upstream manifests: which model (name, id, revision, hook point)
made a folder of vectors, and the check of what a user's flags say against it.

extract_vectors records the identity in every shard manifest; every later stage copies it into
its own manifest under "upstream", so anything made from vectors (a reconstructor, captions,
scores) names the checkpoint its numbers come from, and a stage that loads the model again
loads exactly that one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src.data.io import read_manifest
from src.data.paths import shard_dirs
from src.errors import InputMissing, UserError

IDENTITY_KEYS = ("model", "model_id", "revision", "hook_point")


def vector_identity(vec_dir: Path, shards: list[str] | None = None) -> dict[str, Any]:
    """{model, model_id, revision, hook_point} of the model that made a vector folder.

    Every shard's manifest must exist and agree (shards made by two checkpoints do not mix)."""
    found: dict[str, Any] | None = None
    first = None
    for d in shard_dirs(vec_dir, shards):
        m = read_manifest(d)
        if m is None:
            raise InputMissing(f"{d} has no manifest.json: extract_vectors has not finished it")
        ident = {k: m.get(k, m.get("model_info", {}).get(k)) for k in IDENTITY_KEYS}
        if found is None:
            found, first = ident, d
        elif ident != found:
            raise UserError(
                f"{d} was made by {ident}, but {first} by {found}: one folder, one model"
            )
    assert found is not None  # shard_dirs raises when there is no shard
    return found


def upstream_identity(folder: Path) -> dict[str, Any]:
    """The identity recorded in a derived folder's manifest ("upstream"), e.g. a
    reconstructor's or a caption table folder's."""
    m = read_manifest(folder)
    if m is None:
        raise InputMissing(f"{folder} has no manifest.json: the stage that makes it has not run")
    if "upstream" not in m:
        raise UserError(f"{folder}/manifest.json records no upstream model identity")
    return m["upstream"]


def check_flags(
    found: dict[str, Any],
    source: Path,
    *,
    flags: dict[str, tuple[str, Any]],
    override: bool = False,
) -> dict[str, Any]:
    """The identity a stage works with: the manifest's, unless the user's flags say otherwise.

    flags: identity key -> (flag name, value given or None). A value that disagrees with the
    manifest is a UserError naming both, unless `override` (--override_model), in which case
    the flag wins and the result records what was overridden.
    """
    out = dict(found)
    overridden = {}
    for key, (flag, value) in flags.items():
        if value is None or value == found.get(key):
            continue
        if not override:
            raise UserError(
                f"{flag} {value} disagrees with {source}, made by {key}={found.get(key)!r}; "
                f"drop {flag} to use the manifest's, or pass --override_model to force it"
            )
        out[key] = value
        overridden[key] = found.get(key)
    if overridden:
        out["overridden"] = overridden
    return out


def add_identity_args(parser: Any, *, model_flag: str = "--embed_model") -> None:
    """The identity flags of a stage that reads vectors: optional, checked against manifests."""
    from src.models import MODEL_NAMES

    parser.add_argument(
        model_flag,
        dest="model",
        choices=MODEL_NAMES,
        help="model name (default: the one in the vectors' manifests; checked against them)",
    )
    parser.add_argument(
        "--vlm_id",
        help="hub id or path of the VLM (default: the one that made the vectors; checked)",
    )
    add_override_arg(
        parser, "use --embed_model/--vlm_id even where they disagree with the manifests"
    )


def add_override_arg(parser: Any, help: str) -> None:
    """--override_model: the one way past a model-identity check (every stage that has one)."""
    parser.add_argument("--override_model", action="store_true", help=help)
