"""`make lambda-package` (launch/lambda_package.py): the Lambda handlers' zip builds from the
package registry for Lambda's platform, holds the handlers and what they import, and the handlers
import with nothing but the zip's contents on the path."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from launch import lambda_package
from tests.conftest import ROOT
from tests.imports import top_level_imports

HANDLERS = ("processors.kinesis_to_dynamodb", "processors.kinesis_to_kafka")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> lambda_package.Package:
    out = tmp_path_factory.mktemp("lambda") / "lambda.zip"
    return lambda_package.build(out)


@pytest.fixture(scope="module")
def names(package: lambda_package.Package) -> set[str]:
    with zipfile.ZipFile(package.path) as archive:
        return set(archive.namelist())


def test_the_zip_holds_the_handlers_and_the_core(
    package: lambda_package.Package, names: set[str]
) -> None:
    assert {
        "processors/kinesis_to_dynamodb.py",
        "processors/kinesis_to_kafka.py",
        "processors/kinesis_events.py",
        "speedlayer/__init__.py",
        "speedlayer/config.py",
        "speedlayer/store/dynamodb.py",
        "speedlayer/bus/kafka.py",
    } <= names
    tops = {name.split("/")[0] for name in names}
    # aioboto3 pins the botocore it works with, so boto3 and botocore come along.
    assert {"aioboto3", "aiobotocore", "boto3", "botocore", "aiokafka", "pydantic"} <= tops
    # Not what only the services use, nor pip's console scripts.
    assert not tops & {"api", "ingest", "launch", "flink_sql", "bin", "fastapi", "uvicorn"}
    assert package.bytes < 50 * 2**20, "under Lambda's 50 MB limit for a direct upload"
    if sys.version_info[:2] == (3, 11):
        assert package.compiled
        assert "processors/__pycache__/kinesis_to_dynamodb.cpython-311.pyc" in names


def test_every_third_party_import_of_the_handlers_is_in_the_zip(names: set[str]) -> None:
    """The zip is built from HANDLER_DEPENDENCIES: whatever the packaged modules of speedlayer/
    and processors/ import (lazily too) must come with them; the replay-only modules are left
    out."""
    tops = {name.split("/")[0].removesuffix(".py") for name in names}
    first_party = set(lambda_package.HANDLER_PACKAGES)
    assert not lambda_package.NOT_PACKAGED & names
    missing = set()
    for package in lambda_package.HANDLER_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() in lambda_package.NOT_PACKAGED:
                continue
            unreached = lambda_package.NOT_PACKAGED_IMPORTS.get(
                path.relative_to(ROOT).as_posix(), frozenset()
            )
            for top in top_level_imports(path.read_text()) - unreached:
                if top not in sys.stdlib_module_names and top not in first_party | tops:
                    missing.add(f"{path.relative_to(ROOT)}: {top}")
    assert missing == set()


def test_the_handlers_import_from_the_zip_alone(
    package: lambda_package.Package, tmp_path: Path
) -> None:
    task = tmp_path / "task"
    with zipfile.ZipFile(package.path) as archive:
        archive.extractall(task)
    # -I: no user site, no PYTHON* variables, not the working directory; -S: no site-packages.
    # Only the standard library and the zip's contents can be imported.
    probe = (
        "import sys\n"
        f"sys.path.insert(0, {str(task)!r})\n"
        + "".join(f"import {handler}\n" for handler in HANDLERS)
        + "import aioboto3, aiokafka, botocore, speedlayer.config\n"
        f"assert aioboto3.__file__.startswith({str(task)!r}), aioboto3.__file__\n"
        f"assert botocore.__file__.startswith({str(task)!r}), botocore.__file__\n"
        "assert callable(processors.kinesis_to_dynamodb.handler)\n"
        "assert callable(processors.kinesis_to_kafka.handler)\n"
        "speedlayer.config.Settings()\n"
        "try:\n"
        "    import fastapi\n"
        "except ImportError:\n"
        "    print('isolated')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "isolated"
