"""The Flink tests need the Flink virtualenv and connector jars (`make flink`) and Java."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, require


@pytest.fixture(scope="session")
def flink_ready() -> None:
    require(shutil.which("java") is not None, "Java is not installed (the Flink job runs on it)")
    require(
        (ROOT / ".flink-venv" / "bin" / "python").exists(),
        "no Flink virtualenv (.flink-venv): run `make flink`",
    )
    require(
        any((ROOT / ".flink" / "lib").glob("*.jar")), "no Flink connector jars: run `make flink`"
    )


def flink_work_dir(tmp_path: Path) -> Path:
    work = tmp_path / "flink"
    work.mkdir()
    return work
