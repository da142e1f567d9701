"""The Lambda zip's writer (launch/lambda_package.py): reproducible bytes, Unix modes, no pip
console scripts. The whole build, from the registry, is tests/integration/deploy."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from launch.lambda_package import write_zip


def tree(root: Path, mtime: int) -> Path:
    for name, body in {
        "processors/__init__.py": b"",
        "processors/__pycache__/__init__.cpython-311.pyc": b"\x00pyc",
        "pkg/native.so": b"\x7fELF",
        "bin/speedlayer": b"#!/usr/bin/python\n",
    }.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        os.utime(path, (mtime, mtime))
    (root / "pkg/native.so").chmod(0o755)
    return root


def test_the_same_files_give_the_same_zip(tmp_path: Path) -> None:
    first = write_zip(tree(tmp_path / "a", 1_000_000), tmp_path / "a.zip")
    second = write_zip(tree(tmp_path / "b", 2_000_000), tmp_path / "b.zip")
    assert first == second == 3
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == [
        "pkg/native.so",
        "processors/__init__.py",
        "processors/__pycache__/__init__.cpython-311.pyc",
    ]
    modes = {info.filename: (info.external_attr >> 16) & 0o777 for info in infos}
    assert modes == {
        "pkg/native.so": 0o755,
        "processors/__init__.py": 0o644,
        "processors/__pycache__/__init__.cpython-311.pyc": 0o644,
    }
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
