"""Device and dtype choice, and the argparse helpers every stage shares for them."""

from __future__ import annotations

import argparse
import ctypes
import os
import platform

import torch

from src.errors import UserError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


# glibc's mallopt parameters (malloc.h) and the values retain_heap_memory sets
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
HEAP_OPTIONS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_TOP_PAD, 256 << 20))


def retain_heap_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: no mmap per large block, no trimming of
    the heap's top. True where it took effect (glibc), False elsewhere (macOS, musl).

    By default every block over 32 MB (a batch of Gemma's 262k-entry logits, an N x N Gram
    matrix) is a fresh mmap, whose pages fault in one by one when first written and go back to
    the kernel on free: the main job took 89 million page faults, 288 s of system time on a
    2-core VM, where each fault also stalls the other thread. Kept in the heap, the next block
    of that size reuses pages already mapped (score perturbations, alternating runs in one
    process: 10.2 million faults -> 1.2 million, 148-162 s -> 126-128 s). The cost is a
    resident size that stays at its high-water mark, so this is for one-process drivers such as
    src.pipeline.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in HEAP_OPTIONS)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when present, else cpu; anything else as torch understands it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPES)}") from None


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="compute dtype; auto = bf16 on GPU, fp32 on CPU",
    )


def auto_workers(device: torch.device) -> int:
    """DataLoader decode workers when none are asked for.

    On CPU the forward pass already uses torch's threads; workers beyond the idle cores only
    compete with it (on 2 cores, 2 workers made the extraction stage 27% slower than the model's
    forward alone, 0 workers matched it: bench/bench_extract.py). On GPU the cores are free.
    """
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return max(0, min(4, cores - torch.get_num_threads()))
    return min(8, cores)


def parse_assignments(values: list[str] | None, flag: str) -> dict[str, str]:
    """['a=x', 'b=y'] -> {'a': 'x', 'b': 'y'}, with a clear error for a malformed item."""
    out: dict[str, str] = {}
    for v in values or []:
        name, sep, value = v.partition("=")
        if not sep or not name or not value:
            raise UserError(f"{flag} expects NAME=VALUE, got {v!r}")
        out[name] = value
    return out


def csv_list(text: str) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c'] (argparse type for comma-separated lists)."""
    return [t.strip() for t in text.split(",") if t.strip()]
