"""What this machine has (CPU, cores, RAM, GPU offload) and whether a model pair fits."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil

from engine.errors import DoesNotFit
from engine.gguf_check import validate_gguf

HEADROOM = 512 * 1024**2  # leave this much RAM for the app itself


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    from engine.runtime import gpu_offload_supported

    memory = psutil.virtual_memory()
    return {
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False) or os.cpu_count(),
        "logical_cores": psutil.cpu_count(logical=True) or os.cpu_count(),
        "ram_total": memory.total,
        "ram_available": memory.available,
        "gpu_offload": gpu_offload_supported(),
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }


def kv_cache_bytes(path: Path, n_ctx: int) -> int:
    """f16 K and V for every layer: 2 × layers × n_ctx × kv_heads × head_dim × 2 bytes."""
    info = validate_gguf(path)
    layers = info.arch_value("block_count", 24)
    embd = info.arch_value("embedding_length", 2048)
    heads = max(info.arch_value("attention.head_count", 16), 1)
    kv_heads = info.arch_value("attention.head_count_kv", heads) or heads
    head_dim = info.arch_value("attention.key_length", embd // heads) or embd // heads
    return 2 * layers * n_ctx * kv_heads * head_dim * 2


def memory_needed(paths: list[Path], n_ctx: int) -> int:
    return sum(p.stat().st_size + kv_cache_bytes(p, n_ctx) for p in paths)


def fit_report(paths: list[Path], n_ctx: int, extra_bytes: int = 0) -> dict:
    """Memory a set of model files needs (files + KV cache at n_ctx, plus ``extra_bytes`` for
    models not downloaded yet) against what is available now."""
    needed = memory_needed(paths, n_ctx) + extra_bytes
    available = max(psutil.virtual_memory().available - HEADROOM, 0)
    return {"needed": needed, "available": available, "fits": needed <= available}


def check_fits(paths: list[Path], n_ctx: int) -> None:
    """Refuse, with the numbers, a set of models that will not fit in available RAM."""
    needed = memory_needed(paths, n_ctx)
    available = psutil.virtual_memory().available - HEADROOM
    if needed > available:
        names = " + ".join(p.name for p in paths)
        raise DoesNotFit(needed, max(available, 0), names)
