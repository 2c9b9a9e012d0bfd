"""Vector folders written by hand for tests, with the identity manifest extract_vectors writes."""

from __future__ import annotations

from pathlib import Path

from src.data.io import write_manifest


def finish_shard(folder: Path, model: str = "m", model_id: str = "test/model") -> Path:
    """Mark a hand-written vector shard complete, as made by `model` (`model_id`)."""
    return write_manifest(
        folder,
        stage="extract_vectors",
        model=model,
        model_id=model_id,
        revision=None,
        hook_point="connector",
    )
