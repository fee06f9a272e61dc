"""The fake site's state file survives concurrent writers (its heartbeat and stream threads)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tests.helpers.fake_site import FakeSite, parser


def test_concurrent_state_writes_never_lose_the_file(tmp_path: Path) -> None:
    state = tmp_path / "s1.json"
    site = FakeSite(parser().parse_args(["--port", "1", "--prefix", "p", "--site", "s1",
                                         "--state", str(state)]))  # fmt: skip
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(n: int) -> None:
        start.wait()
        try:
            for i in range(300):
                with site.lock:
                    site.produced = max(site.produced, n * 1000 + i)
                site._write_state()
        except BaseException as exc:  # collected: an exception in a thread fails nothing
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # The last write holds the last snapshot, and no temp file is left behind.
    assert json.loads(state.read_text())["produced"] == 7299
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.json"]
