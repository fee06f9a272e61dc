"""The site's log filters: syft's start-up CRITICAL line demoted, no ANSI or progress bars
in log files. Real processes with the site's real logging setup; syft's own logger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What every site process does at start, then what syft does when a datasite starts and
# when it uploads an asset (tqdm on stderr), and a coloured record.
SCRIPT = """
import logging, sys
from pathlib import Path
from fedmq_runtime.logs import setup_logging
from site_node.logfilters import install_site_log_filters
setup_logging(Path(sys.argv[1]), "text", sys.argv[2] == "verbose")
install_site_log_filters()
{emit}
logging.getLogger("site").info("\\x1b[31mred\\x1b[0m alarm")
logging.getLogger("site").warning("still here")
from tqdm import tqdm
for _ in tqdm(range(3), desc="Uploading"):
    pass
"""
SYFT = "import syft.server.server as s\ns.logger.critical(\"Hash of the signing key 'ab12c...'\")"
PLAIN = "logging.getLogger('syft.server.server').critical(\"Hash of the signing key 'ab12c...'\")"


def _run(tmp_path: Path, emit: str, verbose: bool = False) -> tuple[str, str]:
    log = tmp_path / "site.log"
    code = SCRIPT.format(emit=emit)
    out = subprocess.run(
        [sys.executable, "-c", code, str(log), "verbose" if verbose else "quiet"],
        capture_output=True,  # stderr is not a terminal, as under systemd
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return log.read_text(), out.stderr


@pytest.mark.slow  # imports syft in a subprocess
def test_syft_signing_key_hash_line_is_gone_and_the_log_is_plain_text(tmp_path: Path) -> None:
    text, stderr = _run(tmp_path, SYFT)  # syft's real logger object
    for where in (text, stderr):
        assert "Hash of the signing key" not in where
        assert "CRITICAL" not in where
        assert "\x1b" not in where and "\r" not in where
        assert "Uploading" not in where  # no tqdm bar
        assert "red alarm" in where and "still here" in where


def test_with_verbose_the_hash_line_is_a_debug_line(tmp_path: Path) -> None:
    text, _ = _run(tmp_path, PLAIN, verbose=True)
    line = next(x for x in text.splitlines() if "Hash of the signing key" in x)
    assert " DEBUG " in line and "CRITICAL" not in line


def test_other_critical_records_are_untouched(tmp_path: Path) -> None:
    text, _ = _run(tmp_path, "logging.getLogger('syft.server.server').critical('disk on fire')")
    assert any("CRITICAL" in x and "disk on fire" in x for x in text.splitlines())
