"""The training worker's parts that need no syft: the daemon's imports, limits, the channel.

The end-to-end behaviour (real ``fedmq-site run``, syft, kill -9, memory and CPU limits)
is in tests/test_site_worker.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from site_node.command_guard import Ed25519Key, load_public_key
from site_node.training.jobs.config import TrainingSettings
from site_node.training.worker import limits
from site_node.training.worker.protocol import Channel, Finished, Run
from site_node.training.worker.supervisor import _exit_reason

REPO = Path(__file__).resolve().parents[1]

_DAEMON = """
import json, sys, time
from pathlib import Path
from site_node.daemon import SiteDaemon
from site_node.settings import SiteSettings

data = Path(sys.argv[1])
settings = SiteSettings.model_validate({
    "site_id": "x", "data_dir": str(data), "mqtt": {"port": 1},
    "training": {"allow": ["cmapss-rul"], "worker_idle_s": 1,
                 "datasets": [{"name": "d", "task": "cmapss-rul", "paths": ["/nonexistent"]}]},
})
daemon = SiteDaemon(settings)
daemon._load_extensions()  # the training extension installs its job controller
# Before this issue a thread of the daemon began importing syft at once: look for 3 s.
deadline = time.monotonic() + 3.0
while True:
    heavy = sorted(m for m in list(sys.modules)
                   if m.split(".")[0] in {"torch", "syft", "pandas", "numpy", "sklearn", "scipy"})
    if heavy or time.monotonic() > deadline:
        break
    time.sleep(0.05)
result = {"heavy": heavy, "jobs": "site_node.training.jobs.service" in sys.modules}
(data / "result.json").write_text(json.dumps(result))  # syft may capture stdout
for fn in daemon._on_stop:
    fn()
"""


def test_a_training_site_daemon_imports_no_torch_syft_pandas_or_numpy(tmp_path: Path) -> None:
    # The hosted-datasets record is there, so no worker starts at boot either.
    (tmp_path / "syft").mkdir()
    record = {"d": {"task": "cmapss-rul", "rows": 5, "columns": ["a"], "paths": [], "params": {}}}
    (tmp_path / "syft" / "datasets.json").write_text(json.dumps(record))
    out = subprocess.run(
        [sys.executable, "-c", _DAEMON, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads((tmp_path / "result.json").read_text())
    assert got == {"heavy": [], "jobs": True}


def test_defaults_are_safe_on_a_shared_machine() -> None:
    t = TrainingSettings()
    cores = os.cpu_count() or 2
    assert limits.threads(t) == max(1, cores // 2)
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert limits.memory_limit_mb(t) == max(128, min(2048, ram_mb // 2))
    assert t.nice == 10 and t.max_concurrent_jobs == 1 and 60 <= t.worker_idle_s <= 600
    set_ = TrainingSettings(threads=3, memory_limit_mb=700, nice=15)
    assert (limits.threads(set_), limits.memory_limit_mb(set_)) == (3, 700)
    assert limits.thread_env(3)["OMP_NUM_THREADS"] == "3"
    assert limits.thread_env(3, {})["OMP_WAIT_POLICY"] == "PASSIVE"  # idle threads sleep
    assert limits.thread_env(3, {"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    with pytest.raises(ValueError):
        TrainingSettings(nice=20)
    with pytest.raises(ValueError):
        TrainingSettings(memory_limit_mb=10)
    assert TrainingSettings(max_concurrent_jobs=4).max_concurrent_jobs == 4
    with pytest.raises(ValueError):
        TrainingSettings(max_concurrent_jobs=0)


def test_the_syft_lock_is_released_only_by_the_thread_that_holds_it() -> None:
    from site_node.training.job_body import SYFT_LOCK

    got: list[bool] = []

    def other() -> None:  # another thread may take the lock only while it is released
        got.append(SYFT_LOCK._lock.acquire(timeout=0.05))
        if got[-1]:
            SYFT_LOCK._lock.release()

    with SYFT_LOCK:
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with SYFT_LOCK.released():
            t = threading.Thread(target=other)
            t.start()
            t.join()
    with SYFT_LOCK.released():  # not held by this thread: a no-op
        pass
    assert got == [False, True]
    assert SYFT_LOCK._lock.acquire(timeout=0.05)
    SYFT_LOCK._lock.release()


def test_cpus_go_to_the_least_claimed_and_ties_spread_by_site() -> None:
    cpus = [0, 1, 2, 3]
    # Nothing claimed: the site's rotation of highest-first; different sites spread.
    firsts = {limits.pick_cpus(cpus, 1, {}, key)[0] for key in "abcdefgh"}
    assert len(firsts) > 1
    assert limits.pick_cpus(cpus, 1, {}, "") == [3]  # no key: the last CPU, as before
    # Claimed CPUs are avoided whatever the key says.
    for key in "abcdefgh":
        assert limits.pick_cpus(cpus, 2, {3: 1, 2: 1, 1: 2}, key) == [0, 2] or limits.pick_cpus(
            cpus, 2, {3: 1, 2: 1, 1: 2}, key
        ) == [0, 3]
        assert limits.pick_cpus(cpus, 1, {0: 1, 1: 1, 3: 1}, key) == [2]
    assert limits.pick_cpus(cpus, 4, {0: 5}, "x") == cpus  # all of them: no choice
    assert limits.parse_cpu_list("0-2,5,7-8\n") == {0, 1, 2, 5, 7, 8}
    assert limits.parse_cpu_list("junk") == set()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to choose from")
def test_a_new_worker_avoids_the_cpu_another_worker_process_is_bound_to() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    held = allowed[-1]
    # Real processes that look like a worker (their command line names the module; a
    # marker of this test's own, as other tests' workers may run beside it) bound to one
    # CPU, as a co-located site's worker is; a new process reading /proc avoids that CPU.
    marker = f"fedmq-test-worker-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    hold = (
        f"import os, sys; os.sched_setaffinity(0, {{{held}}}); print(1, flush=True);"
        "sys.stdin.read()"
    )
    others = [subprocess.Popen([sys.executable, "-c", hold, marker], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    try:
        for other in others:
            assert other.stdout is not None and other.stdout.readline().strip() == "1"
        assert limits.worker_claims(allowed, (marker.encode(),)) == {held: 2}
        pick = (
            "import json, os; from site_node.training.worker import limits;"
            "a = sorted(os.sched_getaffinity(0));"
            f"c = limits.worker_claims(a, ({marker.encode()!r},));"
            "print(json.dumps(limits.pick_cpus(a, 1, c, KEY)))"
        )
        for key in ("x", "y", "z", ""):
            out = subprocess.run([sys.executable, "-c", pick.replace("KEY", repr(key))],
                                 capture_output=True, text=True, check=True, cwd=REPO)  # fmt: skip
            chosen = json.loads(out.stdout)
            assert len(chosen) == 1 and chosen[0] != held, (key, chosen, held)
    finally:
        for other in others:
            other.kill()
            other.wait()
    assert limits.worker_claims(allowed, (marker.encode(),)) == {}


def test_rss_of_a_live_and_a_gone_process() -> None:
    mine = limits.rss_mb(os.getpid())
    assert mine is not None and 5 < mine < 100_000
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert limits.rss_mb(proc.pid) is None


def test_the_channel_carries_whole_messages_and_reports_the_other_end_closing() -> None:
    a, b = socket.socketpair()
    left, right = Channel(a), Channel(b)
    big = Run("job-1", "cmapss-rul", os.urandom(3 * 1024 * 1024), {"epochs": 2})

    def send() -> None:
        left.send(big)
        left.send(Finished("j", b"w", 1, {"rmse": 1.0}, 0.5))

    sender = threading.Thread(target=send)
    sender.start()
    assert right.recv() == big
    assert right.recv() == Finished("j", b"w", 1, {"rmse": 1.0}, 0.5)
    sender.join()
    left.close()
    with pytest.raises(EOFError):
        right.recv()


def test_exit_reasons_name_the_signal() -> None:
    assert _exit_reason(-signal.SIGKILL) == (
        "training worker killed by SIGKILL (kill -9, or the kernel's out-of-memory killer)"
    )
    assert _exit_reason(-signal.SIGSEGV) == "training worker killed by SIGSEGV"
    assert _exit_reason(1) == "training worker exited with code 1"


# -- the idle daemon's memory: Ed25519 through the libcrypto the ssl module loaded ---------

# RFC 8032, 7.1, TEST 1: key, message (empty), signature.
_RFC_KEY = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
_RFC_MSG = ""
_RFC_SIG = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_ed25519_key_verifies_like_the_rfc_and_refuses_every_altered_signature(
    backend: str,
) -> None:
    key = Ed25519Key(bytes.fromhex(_RFC_KEY), backend)
    assert key.backend == backend
    sig, msg = bytes.fromhex(_RFC_SIG), bytes.fromhex(_RFC_MSG)
    key.verify(sig, msg)
    for bad_sig, bad_msg in [
        (sig, b"\x73"),
        (sig[:-1] + bytes([sig[-1] ^ 1]), msg),
        (bytes([sig[0] ^ 0x80]) + sig[1:], msg),
        (sig[:63], msg),
        (sig + b"\x00", msg),
        (b"", msg),
    ]:
        with pytest.raises(ValueError):
            key.verify(bad_sig, bad_msg)


def test_both_backends_agree_with_cryptography_signatures(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for i in range(50):
        private = Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes_raw()
        msg = os.urandom(i * 7)
        sig = private.sign(msg)
        for backend in ("openssl", "cryptography"):
            Ed25519Key(raw, backend).verify(sig, msg)
            with pytest.raises(ValueError):
                Ed25519Key(raw, backend).verify(sig, msg + b"!")


def test_the_coordinators_pem_key_loads_and_other_keys_do_not(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from coordinator.admin.signing import generate_keypair, load_private_key

    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    key = load_public_key(tmp_path / "k.pub")
    key.verify(load_private_key(tmp_path / "k").sign(b"abc"), b"abc")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "ec.pub").write_bytes(pem)
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "ec.pub")
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM public key"):
        load_public_key(tmp_path / "bad.pub")


def test_verifying_a_signed_command_loads_no_cryptography(tmp_path: Path) -> None:
    from coordinator.admin.signing import generate_keypair

    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    code = (
        "import sys\n"
        "from site_node.command_guard import load_public_key\n"
        f"key = load_public_key({str(tmp_path / 'k.pub')!r})\n"
        f"key.verify(open({str(tmp_path / 'sig')!r}, 'rb').read(), b'abc')\n"
        "print(key.backend, sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    from coordinator.admin.signing import load_private_key

    (tmp_path / "sig").write_bytes(load_private_key(tmp_path / "k").sign(b"abc"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["openssl", "[]"]
