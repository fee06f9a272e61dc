"""The training worker's resource limits: memory, CPU threads, nice level.

Memory is watched from the daemon (:class:`site_node.training.worker.WorkerSupervisor`
reads the worker's resident set from ``/proc`` every 0.1 s and kills it with SIGKILL past
the limit, so the job fails with "memory limit N MB reached" before the machine swaps).
An address-space rlimit is no substitute: importing syft and torch alone maps ~1 GB of
virtual memory for ~480 MB resident, and every new thread reserves malloc arenas, so a
limit on virtual memory fails healthy jobs and says nothing about real use.

CPU: the worker lowers its own priority (``nice``) and binds itself to ``threads`` CPUs
(the last ones it may use) first thing, before any thread exists (Linux applies both per
thread and new threads inherit them), so whatever a task does (its own threads included)
it gets at most ``threads`` cores at the plant software's leftover priority. It starts
with the OpenMP/BLAS thread variables set and torch's pools sized to match, so torch and
numpy do not oversubscribe those cores.
"""

from __future__ import annotations

import os

from site_node.training.jobs.config import TrainingSettings

__all__ = [
    "DEFAULT_MEMORY_CAP_MB",
    "apply_cpus",
    "apply_nice",
    "memory_limit_mb",
    "rss_mb",
    "thread_env",
    "threads",
    "trim_memory",
]

# Without memory_limit_mb: half the machine's RAM, at most this.
DEFAULT_MEMORY_CAP_MB = 2048
_PAGE = os.sysconf("SC_PAGE_SIZE")
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def threads(training: TrainingSettings) -> int:
    """Compute threads of a job: as configured, else half the cores (at least 1)."""
    if training.threads is not None:
        return training.threads
    return max(1, (os.cpu_count() or 2) // 2)


def memory_limit_mb(training: TrainingSettings) -> int:
    """The worker's memory limit: as configured, else half the RAM, at most 2048 MB."""
    if training.memory_limit_mb is not None:
        return training.memory_limit_mb
    total = _PAGE * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return max(128, min(DEFAULT_MEMORY_CAP_MB, total // 2))


def thread_env(n: int) -> dict[str, str]:
    """Environment that holds OpenMP, MKL, OpenBLAS and numexpr pools to ``n`` threads."""
    return {name: str(n) for name in _THREAD_VARS}


def apply_nice(level: int) -> None:
    """Lower the calling thread's priority to ``level`` (threads it starts inherit it)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if level > current:
        os.setpriority(os.PRIO_PROCESS, 0, level)


def apply_cpus(n: int) -> list[int]:
    """Bind the calling thread (and the threads it starts) to ``n`` of its allowed CPUs,
    the highest-numbered ones; returns them. Where affinity cannot be set: all allowed."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
        chosen = allowed[-n:] if n < len(allowed) else allowed
        os.sched_setaffinity(0, chosen)
    except (AttributeError, OSError):
        return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return chosen


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / (1024 * 1024)
    except (OSError, IndexError, ValueError):
        return None


def trim_memory() -> bool:
    """Hand the C heap's free pages back to the machine (glibc ``malloc_trim(0)``).

    Called in the daemon when its training worker stops: passing a job's weights and
    results through (pipe, outbox, MQTT) leaves freed megabytes inside glibc's heap and
    thread arenas, which the daemon would otherwise keep resident while it idles.
    Returns False where there is no glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
