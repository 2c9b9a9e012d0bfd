"""Model registry: short name -> adapter class, and the one factory that loads an adapter."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from src.errors import UserError
from src.models.base import VLMAdapter

# Module paths rather than classes, so that importing the registry does not import every family.
_REGISTRY: dict[str, str] = {
    "mini": "src.models.mini:MiniAdapter",
    "mini-gemma": "src.models.mini:MiniGemmaAdapter",
    "llava": "src.models.llava:LlavaAdapter",
    "idefics2": "src.models.idefics2:Idefics2Adapter",
    "qwen2.5vl": "src.models.qwen_vl:Qwen25VLAdapter",
    "qwen3.5": "src.models.qwen_vl:Qwen35Adapter",
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def adapter_class(name: str) -> type[VLMAdapter]:
    try:
        module_name, cls_name = _REGISTRY[name].split(":")
    except KeyError:
        raise UserError(f"unknown model {name!r}; registered: {', '.join(MODEL_NAMES)}") from None
    return getattr(importlib.import_module(module_name), cls_name)


def load_adapter(
    name: str,
    model_id: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> VLMAdapter:
    """Load the adapter registered as `name` (model_id None: the adapter's default id)."""
    cls = adapter_class(name)
    return cls.load(
        model_id,
        device=torch.device(device),
        dtype=dtype,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )


def load_for_vectors(
    vec_dir: Path,
    shards: list[str] | None = None,
    *,
    model: str | None = None,
    vlm_id: str | None = None,
    override: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[VLMAdapter, dict[str, Any]]:
    """The adapter that made the vectors in `vec_dir` (name, id, revision from their manifests),
    and that identity. `model` / `vlm_id` (the user's flags) must agree unless `override`."""
    from src.data.identity import check_flags, vector_identity
    from src.data.io import local_path, portable

    found = vector_identity(vec_dir, shards)
    ident = check_flags(
        found,
        vec_dir,
        flags={"model": ("--embed_model", model), "model_id": ("--vlm_id", portable(vlm_id))},
        override=override,
    )
    adapter = load_adapter(ident["model"], str(local_path(ident["model_id"])), device=device,
                           dtype=dtype, revision=ident["revision"])  # fmt: skip
    if found.get("hook_point") not in (None, adapter.hook_point):
        raise UserError(
            f"{vec_dir} was extracted at hook point {found['hook_point']!r}, but the "
            f"{ident['model']} adapter hooks {adapter.hook_point!r}: re-extract the vectors"
        )
    return adapter, ident


def load_for_stage(args: Any) -> tuple[VLMAdapter, dict[str, Any]]:
    """load_for_vectors with the flags that src.data.identity.add_identity_args and
    src.runtime.add_runtime_args define (vec_dir, shards, model, vlm_id, override_model,
    device, dtype)."""
    from src.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return load_for_vectors(args.vec_dir, args.shards, model=args.model, vlm_id=args.vlm_id,
                            override=args.override_model, device=device,
                            dtype=resolve_dtype(args.dtype, device))  # fmt: skip
