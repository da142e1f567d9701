"""The documents generated from code (``docs/settings.md``, ``docs/cost.md``): written by their
module's ``python -m``, checked with ``--check`` (the tests keep them current)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(doc: Path, render: Callable[[], str], module: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=f"write {doc.name}")
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not doc.exists() or doc.read_text() != text:
            print(f"{doc} is out of date: run `python -m {module}`", file=sys.stderr)
            return 1
        return 0
    doc.write_text(text)
    print(f"wrote {doc}")
    return 0
