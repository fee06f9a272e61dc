"""The training worker's resource limits: memory, CPU threads, nice level.

Memory is watched from the daemon (:class:`site_node.training.worker.WorkerSupervisor`
reads the worker's resident set from ``/proc`` every 0.1 s and kills it with SIGKILL past
the limit, so the job fails with "memory limit N MB reached" before the machine swaps).
An address-space rlimit is no substitute: importing syft and torch alone maps ~1 GB of
virtual memory for ~480 MB resident, and every new thread reserves malloc arenas, so a
limit on virtual memory fails healthy jobs and says nothing about real use.

CPU: the worker lowers its own priority (``nice``) and binds itself to ``threads`` CPUs
first thing, before any thread exists (Linux applies both per thread and new threads
inherit them), so whatever a task does (its own threads included) it gets at most
``threads`` cores at the plant software's leftover priority. Which CPUs: those the fewest
other fedmq workers (training or scoring, of any site on the machine) are bound to, ties
broken by a rotation keyed on the site, so co-located sites and a site's own scoring
process do not all pile onto one core while the others idle. It starts
with the OpenMP/BLAS thread variables set and torch's pools sized to match, so torch and
numpy do not oversubscribe those cores.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping

from site_node.training.jobs.config import TrainingSettings

__all__ = [
    "DEFAULT_MEMORY_CAP_MB",
    "apply_cpus",
    "apply_nice",
    "memory_limit_mb",
    "parse_cpu_list",
    "pick_cpus",
    "rss_mb",
    "thread_env",
    "threads",
    "trim_memory",
    "worker_claims",
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


def thread_env(n: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment that holds OpenMP, MKL, OpenBLAS and numexpr pools to ``n`` threads,
    with OpenMP's idle threads sleeping (``OMP_WAIT_POLICY=PASSIVE``) unless ``environ``
    (the daemon's environment) chooses a policy.

    With the thread count set in the environment, torch's OpenMP threads spin between
    parallel regions; several workers sharing the cores (co-located sites, or a site
    beside the plant's software) then burn the CPU the others need: 4 workers training
    on 2 cores took 13.4 s and 6.7 CPU-s per job spinning, 0.44 s and 0.22 CPU-s passive
    (alone, 0.08 vs 0.12 s). A training worker yields, it does not spin.
    """
    env = {name: str(n) for name in _THREAD_VARS}
    environ = os.environ if environ is None else environ
    env["OMP_WAIT_POLICY"] = environ.get("OMP_WAIT_POLICY", "PASSIVE")
    return env


def apply_nice(level: int) -> None:
    """Lower the calling thread's priority to ``level`` (threads it starts inherit it)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if level > current:
        os.setpriority(os.PRIO_PROCESS, 0, level)


_WORKER_MODULES = (b"site_node.training.worker", b"site_node.scoring.worker")


def apply_cpus(n: int, key: str = "") -> list[int]:
    """Bind the calling thread (and the threads it starts) to ``n`` of its allowed CPUs;
    returns them. Where affinity cannot be set: all allowed.

    The CPUs are those with the fewest other fedmq workers bound to them
    (:func:`worker_claims`); among equals, a rotation of the highest-numbered first keyed
    on ``key`` (the site id), so workers that start at the same moment spread too.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
        chosen = pick_cpus(allowed, n, worker_claims(allowed), key)
        os.sched_setaffinity(0, chosen)
    except (AttributeError, OSError):
        return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return chosen


def pick_cpus(allowed: list[int], n: int, claims: dict[int, int], key: str = "") -> list[int]:
    """``n`` of ``allowed``: the least claimed, ties by a ``key``-rotated descending order."""
    if n >= len(allowed):
        return list(allowed)
    shift = zlib.crc32(key.encode()) % len(allowed)
    descending = sorted(allowed, reverse=True)
    rank = {cpu: (i + shift) % len(allowed) for i, cpu in enumerate(descending)}
    return sorted(sorted(allowed, key=lambda c: (claims.get(c, 0), rank[c]))[:n])


def worker_claims(
    allowed: list[int], modules: tuple[bytes, ...] = _WORKER_MODULES
) -> dict[int, int]:
    """Per CPU, how many other fedmq worker processes on this machine (a command line
    naming one of ``modules``) are bound to it; only those bound to fewer than all of
    ``allowed`` count. Best effort: unreadable /proc entries are skipped."""
    claims: dict[int, int] = {}
    me = os.getpid()
    try:
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me]
    except OSError:
        return claims
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            if not any(m in cmdline for m in modules):
                continue
            with open(f"/proc/{pid}/status") as fh:
                line = next(x for x in fh if x.startswith("Cpus_allowed_list:"))
        except (OSError, StopIteration):
            continue
        cpus = parse_cpu_list(line.split(":", 1)[1])
        if cpus and len(cpus & set(allowed)) < len(allowed):
            for cpu in cpus:
                claims[cpu] = claims.get(cpu, 0) + 1
    return claims


def parse_cpu_list(text: str) -> set[int]:
    """``0-3,6`` (the kernel's list format) as a set; empty when it does not parse."""
    out: set[int] = set()
    try:
        for part in text.strip().split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.update(range(int(lo), int(hi) + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        return set()
    return out


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
