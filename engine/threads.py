"""One ggml thread pool shared by every llama context in the process.

By default each llama context starts its own pool whose workers keep spinning for a while
after each evaluation. With a target and a draft model taking turns, the idle context's
spinning workers steal the cores the busy one needs: on a 2-core CPU this alone made a
draft-model step about twice as slow. Attaching one shared pool (llama_attach_threadpool,
which llama-cpp-python does not wrap) lets the same workers serve both contexts in turn.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import llama_cpp

GGML_MAX_N_THREADS = 512  # ggml.h


class ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_lock = threading.Lock()
_pools: dict[int, ctypes.c_void_p] = {}
_libs: tuple | None = None


def _load() -> tuple:
    global _libs
    if _libs is None:
        folder = Path(llama_cpp.__file__).parent / "lib"
        base = ctypes.CDLL(str(next(folder.glob("libggml-base.*"))))
        cpu = ctypes.CDLL(str(next(folder.glob("libggml-cpu.*"))))
        base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(ThreadpoolParams),
                                                     ctypes.c_int]
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(ThreadpoolParams)]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        lib = llama_cpp.llama_cpp._lib
        lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                                ctypes.c_void_p]
        lib.llama_attach_threadpool.restype = None
        _libs = (base, cpu, lib)
    return _libs


def attach_shared_pool(ctx, n_threads: int) -> bool:
    """Attach the process-wide pool for ``n_threads`` to a llama context. False when the
    libraries lack the symbols (then the context keeps its own pool)."""
    try:
        base, cpu, lib = _load()
    except (OSError, StopIteration, AttributeError):
        return False
    with _lock:
        pool = _pools.get(n_threads)
        if pool is None:
            params = ThreadpoolParams()
            base.ggml_threadpool_params_init(ctypes.byref(params), n_threads)
            pool = cpu.ggml_threadpool_new(ctypes.byref(params))
            if not pool:
                return False
            _pools[n_threads] = pool  # lives as long as the process
    lib.llama_attach_threadpool(ctx, pool, pool)
    return True
