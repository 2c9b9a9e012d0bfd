"""Atomic file writes and manifests: a file either exists whole or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import torch

MANIFEST_NAME = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_PREFIX = "<repo>/"  # marks a path inside this checkout in a manifest


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it to `path`.

    The rename is atomic on POSIX, so a reader never sees a half-written file, and a run killed
    at any moment leaves only `.tmp` leftovers that the next run ignores and overwrites.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_unsynced(path: Path, data: bytes) -> None:
    """Write `data` through a temporary name and rename it to `path`, like atomic_write, but
    without an fsync: for many small files that the caller syncs at once (os.sync()) before the
    manifest that vouches for them. A killed process leaves no half file under the real name;
    only a power loss before that sync can leave one empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_torch_atomic(path: Path, obj: Any) -> Path:
    """torch.save through a temp file; `obj` must hold only tensors, strings and numbers.

    Saved through a file handle: given a path, torch names the archive's inner folder after the
    (random) temp file name, and equal content would no longer give equal bytes.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def load_torch(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@cache
def code_version() -> str:
    """Git commit of this checkout (with '+dirty' when it has local changes), else 'unknown'."""
    root = REPO_ROOT
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def portable(path: str | Path | None) -> str | None:
    """A path as a manifest records it, valid after the checkout or the data folder moves:
    inside this checkout -> '<repo>/relative/path'; elsewhere under the working directory ->
    relative to it; anything else as given. A string is taken as a path only if it is absolute
    or exists (otherwise it is a hub id such as 'org/name' and is kept)."""
    if path is None:
        return None
    text = str(path)
    if text.startswith(REPO_PREFIX):
        return text
    if isinstance(path, str) and not (Path(text).is_absolute() or Path(text).exists()):
        return text
    p = Path(os.path.abspath(text))
    if p == REPO_ROOT or REPO_ROOT in p.parents:
        return REPO_PREFIX + p.relative_to(REPO_ROOT).as_posix()
    cwd = Path.cwd()
    if cwd in p.parents:
        return p.relative_to(cwd).as_posix()
    return text


def local_path(text: str) -> Path:
    """The inverse of portable(): where a recorded path is on this machine now."""
    if text.startswith(REPO_PREFIX):
        return REPO_ROOT / text.removeprefix(REPO_PREFIX)
    return Path(text)


def _portable_values(obj: Any) -> Any:
    """Every Path inside a manifest's fields made portable (args hold Path flags)."""
    if isinstance(obj, Path):
        return portable(obj)
    if isinstance(obj, dict):
        return {k: _portable_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_portable_values(v) for v in obj]
    return obj


def write_manifest(folder: Path, **fields: Any) -> Path:
    """Write `folder/manifest.json` last: its presence means the folder is complete. Paths
    among the fields are recorded portably (see portable())."""
    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        **_portable_values(fields),
    }
    return write_json_atomic(Path(folder) / MANIFEST_NAME, manifest)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).exists()


def fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over the files' paths (relative to root) and contents: equal inputs, equal value."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()
