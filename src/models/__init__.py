"""Model registry: short name -> adapter class, and the one factory that loads an adapter."""

from __future__ import annotations

import importlib

import torch

from src.models.base import VLMAdapter

# Module paths rather than classes, so that importing the registry does not import every family.
_REGISTRY: dict[str, str] = {
    "mini": "src.models.mini:MiniAdapter",
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
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(MODEL_NAMES)}") from None
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
