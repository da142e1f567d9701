"""The import directions of docs/design.md#layout, checked on every module's source.

The core (``speedlayer``) imports only itself; each service (``api``, ``ingest``,
``processors``) imports the core and itself, never another service; only the composition layer
(``launch``) brings services together. Every ``import`` counts: at module level, inside functions,
and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imports import top_level_imports

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {
    "speedlayer",
    "api",
    "ingest",
    "processors",
    "flink_sql",
    "launch",
    "infra",
    "bench",
    "tests",
}
ALLOWED = {
    "speedlayer": {"speedlayer"},
    "api": {"speedlayer", "api"},
    "ingest": {"speedlayer", "ingest"},
    "processors": {"speedlayer", "processors"},
    "flink_sql": {"speedlayer", "flink_sql"},
    "launch": {
        "speedlayer",
        "api",
        "ingest",
        "processors",
        "flink_sql",
        "launch",
    },  # the AWS stack as code: names and handlers from the code it deploys
    "infra": {"speedlayer", "processors", "flink_sql", "launch", "infra"},
}


def imported_packages(source: str) -> set[str]:
    """The top-level first-party packages that ``source`` imports."""
    return top_level_imports(source) & FIRST_PARTY


def violations(package: str, files: list[Path], root: Path = ROOT) -> list[str]:
    out = []
    for path in files:
        for target in sorted(imported_packages(path.read_text()) - ALLOWED[package]):
            out.append(f"{path.relative_to(root)} imports {target}")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    assert violations(package, files) == []


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker is not blind: lazy, TYPE_CHECKING and ``from`` imports are all found."""
    module = tmp_path / "bad.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "if TYPE_CHECKING:\n"
        "    from processors.runner import PipelineRunner\n"
        "def f():\n"
        "    import api.app\n"
        "    from ingest import files\n"
        "from . import sibling\n"
    )
    assert imported_packages(module.read_text()) == {"processors", "api", "ingest"}
    assert violations("speedlayer", [module], tmp_path) == [
        "bad.py imports api",
        "bad.py imports ingest",
        "bad.py imports processors",
    ]
    assert violations("launch", [module], tmp_path) == []
