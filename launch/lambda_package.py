"""The Lambda handlers' deployment package, a zip for the Python 3.11 runtime on x86_64.

    python -m launch.lambda_package [--out build/lambda.zip]       # `make lambda-package`

Handlers ``processors.kinesis_to_dynamodb.handler`` and ``processors.kinesis_to_kafka.handler``
(docs/aws.md#deploying). They import only the core and ``processors`` (docs/design.md#layout),
and of the third-party packages only ``HANDLER_DEPENDENCIES`` (tests/integration/deploy checks
both), so the zip holds those with what they need, at the versions of constraints.txt, and the
packages ``speedlayer`` and ``processors``; not the web stack, the feed or the CLI.

1. ``pip install -c constraints.txt --target DIR --platform manylinux2014_x86_64
   --only-binary=:all: --python-version 3.11`` of ``HANDLER_DEPENDENCIES``: Lambda's platform,
   whatever machine builds it. boto3 and botocore are in the runtime too, but aiobotocore pins
   the botocore it works with, so both are packaged (the zip comes first on Lambda's path);
2. the project itself, without dependencies, from a copy of its sources (a stale ``build/lib``
   cannot leak into it); of it only ``speedlayer`` and ``processors`` are kept;
3. bytecode compiled ahead (hash-based, paths as on Lambda, ``/var/task``) when built by Python
   3.11, so a cold start does not compile botocore;
4. the zip: entries sorted, fixed times and modes, so the same sources and pins give the same
   bytes (a deployment tool's asset hash changes only with the code).
"""

from __future__ import annotations

import argparse
import compileall
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "build" / "lambda.zip"
# What the handlers import from the project (their layer and the core).
HANDLER_PACKAGES = ("speedlayer", "processors")
# Modules of those packages that the handlers never import: `speedlayer replay`'s columnar
# history path (and its numpy), the command line's progress display (rich) and the Polygon
# WebSocket protocol of the API and the simulator (orjson). Not in the zip.
NOT_PACKAGED = frozenset(
    {
        "processors/columnar.py",
        "processors/history.py",
        "speedlayer/columns.py",
        "speedlayer/progress.py",
        "speedlayer/polygon_ws.py",
    }
)
# Lazy imports of packaged modules that the handlers never reach, so their packages are not in
# the zip: exchange time's vectorised bucket starts (numpy; the columnar path's) and its exchange
# calendars (the session 1d interval, which the handlers refuse with a ConfigError naming the
# missing package).
NOT_PACKAGED_IMPORTS = {"speedlayer/exchange_time.py": frozenset({"numpy", "exchange_calendars"})}
# The third-party distributions the handlers' code imports (the rest comes as their dependencies).
HANDLER_DEPENDENCIES = ("aioboto3", "aiokafka", "msgspec", "pydantic", "pydantic-settings")
PYTHON_VERSION = (3, 11)
PLATFORM_OPTIONS = (
    "--platform", "manylinux2014_x86_64", "--only-binary=:all:",
    "--python-version", "3.11", "--implementation", "cp",
)  # fmt: skip
# Where Lambda unpacks the zip: the paths compiled into the bytecode (tracebacks name them).
LAMBDA_TASK_ROOT = "/var/task"
# Of what pip puts in the target: the console scripts (pip compiles nothing: --no-compile).
EXCLUDED_DIRS = frozenset({"bin"})
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Package:
    path: Path
    files: int
    bytes: int
    compiled: bool


def pip_install(target: Path, requirements: Iterable[str], *, no_deps: bool = False) -> None:
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "-c", str(ROOT / "constraints.txt"), "--target", str(target),
        *PLATFORM_OPTIONS, *(["--no-deps"] if no_deps else []), *requirements,
    ]  # fmt: skip
    subprocess.run(command, check=True)


def copy_project(dest: Path) -> Path:
    """The sources the project's wheel needs, for the handlers' packages only."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory).relative_to(ROOT)
        return set(skip(directory, names)) | {
            name for name in names if (here / name).as_posix() in NOT_PACKAGED
        }

    for package in HANDLER_PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest


def install(target: Path, work: Path) -> None:
    """Everything the handlers need, into ``target``."""
    pip_install(target, HANDLER_DEPENDENCIES)
    source = copy_project(work / "source")
    project = work / "project"
    pip_install(project, [str(source)], no_deps=True)
    # Not its metadata (speedlayer-*.dist-info): it describes the whole project (the CLI's entry
    # point, api, launch), names the temporary source directory, and nothing reads it.
    for package in HANDLER_PACKAGES:
        shutil.copytree(project / package, target / package)


def compile_bytecode(target: Path) -> bool:
    """Compile every module of ``target`` for Lambda (see the module docstring); False when this
    Python is not the runtime's version (the zip then holds sources only)."""
    if sys.version_info[:2] != PYTHON_VERSION:
        return False
    # The result is not checked: a package may ship a module for another Python version that
    # does not compile (and is never imported).
    compileall.compile_dir(
        target,
        quiet=2,
        stripdir=str(target),
        prependdir=LAMBDA_TASK_ROOT,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        workers=1,
    )
    return True


def package_files(root: Path) -> list[Path]:
    """The files of ``root`` that go into the zip, in zip order."""
    files = [
        path
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).parts[0] not in EXCLUDED_DIRS
    ]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def write_zip(root: Path, out: Path) -> int:
    """Zip ``root`` into ``out`` reproducibly; returns the number of files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    files = package_files(root)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100644 if not path.stat().st_mode & 0o111 else 0o100755) << 16
            info.create_system = 3  # Unix: the modes above apply
            archive.writestr(info, path.read_bytes())
    partial.replace(out)
    return len(files)


def build(out: Path = DEFAULT_OUT) -> Package:
    with tempfile.TemporaryDirectory(prefix="speedlayer-lambda-") as tmp:
        work = Path(tmp)
        target = work / "package"
        install(target, work)
        compiled = compile_bytecode(target)
        files = write_zip(target, out)
    return Package(out, files, out.stat().st_size, compiled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the zip to write")
    args = parser.parse_args(argv)
    package = build(args.out)
    note = "" if package.compiled else " (sources only: built by Python other than 3.11)"
    print(f"wrote {package.path} ({package.files} files, {package.bytes / 2**20:.1f} MiB){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
