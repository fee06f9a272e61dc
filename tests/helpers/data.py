"""The data sets the tests use: the copies shipped inside the packages (never skipped)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN_FD001 = REPO / "site_node" / "data" / "cmapss_fd001" / "train_FD001.txt"
AI4I_CSV = REPO / "site_node" / "data" / "ai4i2020" / "ai4i2020.csv"
