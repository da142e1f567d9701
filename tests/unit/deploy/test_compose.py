"""docker-compose.yml, checked without a Docker engine: valid against the Compose Specification's
schema (the copy check-jsonschema ships, pinned in constraints.txt), every image pinned to an
exact version, a health check on every long-running service, dependencies that exist and wait
for health or completion, and every `speedlayer` command one the real CLI accepts."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import jsonschema_rs
import pytest

from speedlayer.config import Settings
from tests.unit.deploy.containers import (
    COMPOSE,
    ONE_SHOT_CONDITION,
    ROOT,
    SPEEDLAYER_DOCKERFILE,
    load_compose,
    parse_image,
    pinning_problem,
    speedlayer_command,
    stages,
)

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


def compose_schema() -> dict[str, Any]:
    schema = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    loaded: dict[str, Any] = json.loads(schema.read_text())
    return loaded


def schema_errors(document: Compose) -> list[str]:
    validator = jsonschema_rs.validator_for(compose_schema())
    return [
        f"{list(error.instance_path)}: {error.message}" for error in validator.iter_errors(document)
    ]


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def is_one_shot(service: dict[str, Any]) -> bool:
    return bool(service.get("restart") == "no")


def runs_speedlayer(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if not isinstance(build, dict):
        return False
    return bool(build.get("context") == "." and build.get("dockerfile") == SPEEDLAYER_DOCKERFILE)


def test_the_compose_file_is_valid_against_the_compose_specification(compose: Compose) -> None:
    assert compose_schema()["title"] == "Compose Specification"
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["speedlayer"].update(bogus_key=1),
        lambda c: c["services"]["kafka-api"]["depends_on"]["kafka"].update(condition="healthy"),
        lambda c: c["services"]["kafka"].update(healthcheck={"test": 1}),
        lambda c: c["services"]["aws-api"].update(ports="8002:8000"),
    ],
    ids=["unknown key", "bad condition", "bad healthcheck", "ports not a list"],
)
def test_the_schema_check_is_not_blind(compose: Compose, mutate: Any) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert schema_errors(broken)


def test_check_jsonschema_accepts_the_file_as_make_deploy_check_runs_it() -> None:
    tool = shutil.which("check-jsonschema") or str(
        Path(sys.executable).with_name("check-jsonschema")
    )
    proc = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("apache/kafka:4.1.1", None),
        ("flink:2.2.1-scala_2.12-java17", None),
        ("localhost:5000/speedlayer:0.1.0", None),
        (f"python:3.11.16-slim-trixie@sha256:{'a' * 64}", None),
        ("apache/kafka", "no tag"),
        ("localhost:5000/kafka", "no tag"),
        ("apache/kafka:latest", "latest"),
        ("python:3.11-slim", "not an exact version"),
        ("python:3.11.16@sha256:abc", "malformed digest"),
    ],
)
def test_the_pinning_rule(reference: str, problem: str | None) -> None:
    found = pinning_problem(reference)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_every_image_is_pinned_to_an_exact_version(compose: Compose) -> None:
    problems = []
    for name, service in services(compose).items():
        assert "image" in service, f"{name}: name its image (with a version), built or pulled"
        if (problem := pinning_problem(service["image"])) is not None:
            problems.append(f"{name}: {problem}")
        build = service.get("build")
        if build is not None:  # the images it is built from, too
            dockerfile = ROOT / build["context"] / build.get("dockerfile", "Dockerfile")
            names = set()
            for stage in stages(dockerfile):
                if stage.image not in names and (problem := pinning_problem(stage.image)):
                    problems.append(f"{name}: {dockerfile.relative_to(ROOT)}: {problem}")
                if stage.name:
                    names.add(stage.name)
    assert problems == []


def test_one_image_name_one_build(compose: Compose) -> None:
    """Services sharing an image name build it from the same Dockerfile (no silent overwrite)."""
    builds: dict[str, str] = {}
    for name, service in services(compose).items():
        if "build" in service:
            key = json.dumps(service["build"], sort_keys=True)
            assert builds.setdefault(parse_image(service["image"]).name, key) == key, name


def test_every_long_running_service_has_a_health_check(compose: Compose) -> None:
    for name, service in services(compose).items():
        health = service.get("healthcheck") or {}
        if is_one_shot(service):
            assert health.get("disable") is True, f"{name}: a one-shot has no health to report"
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        assert not health.get("disable") and health.get("test"), f"{name}: no health check"
        assert health["test"][0] in ("CMD", "CMD-SHELL"), name


def test_dependencies_exist_and_wait_for_health_or_completion(compose: Compose) -> None:
    all_services = services(compose)
    depended_on_to_finish = set()
    for name, service in all_services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions (long form)"
        for target, spec in depends_on.items():
            assert target in all_services, f"{name} depends on {target}, which does not exist"
            condition = spec.get("condition")
            dependency = all_services[target]
            if condition == "service_healthy":
                assert not is_one_shot(dependency), f"{name}: {target} is a one-shot"
                assert not dependency.get("healthcheck", {}).get("disable"), target
            else:
                assert condition == ONE_SHOT_CONDITION, f"{name} -> {target}: {condition}"
                assert is_one_shot(dependency), f"{name}: {target} never completes"
                depended_on_to_finish.add(target)
            # A dependency runs whenever its dependent does: no profile, or a shared one.
            profiles = set(dependency.get("profiles", []))
            assert not profiles or profiles & set(service.get("profiles", [])), (name, target)
    one_shots = {name for name, service in all_services.items() if is_one_shot(service)}
    assert one_shots == depended_on_to_finish, "every one-shot is awaited by a service"


def test_profiles_are_the_documented_ones(compose: Compose) -> None:
    profiles = {p for service in services(compose).values() for p in service.get("profiles", [])}
    assert profiles == {"kafka", "aws-local"}
    default = [name for name, s in services(compose).items() if not s.get("profiles")]
    assert default == ["speedlayer"]
    assert services(compose)["speedlayer"]["command"] == ["up"]
    header = COMPOSE.read_text().split("\nname:")[0]
    for command in (
        "docker compose up -d --build",
        "docker compose --profile kafka up -d --build --scale speedlayer=0",
        "docker compose --profile aws-local up -d --build --scale speedlayer=0",
    ):
        assert command in header


def test_host_ports_are_unique_so_profiles_run_side_by_side(compose: Compose) -> None:
    seen: dict[str, str] = {}
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            host = str(port).rsplit(":", 1)[0]
            assert host not in seen, f"{name} and {seen.get(host)} both publish {host}"
            seen[host] = name


def test_named_volumes_are_declared(compose: Compose) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_every_speedlayer_command_parses_with_the_real_cli(compose: Compose) -> None:
    commands = {name: s["command"] for name, s in services(compose).items() if runs_speedlayer(s)}
    assert set(commands) >= {"speedlayer", "kafka-ingest", "kafka-sink", "kafka-api", "aws-init"}
    for name, command in commands.items():
        assert isinstance(command, list), f"{name}: the exec form (a list), as the entrypoint"
        context = speedlayer_command(command)
        assert context.command.name == command[0], name
    # ... as does the default command of the image and the render of the Flink job's SQL.
    assert speedlayer_command(["up"]).command.name == "up"
    assert speedlayer_command(["flink", "plan", "--sql-only", "--env", "kafka", "--cluster"])


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        [],
        ["ingest", "--bogus"],
        ["process", "--store", "nope"],
        ["sink", "--bus"],
        ["flink", "plan", "--cluster", "--no-such-flag"],
        ["flink", "nothing"],
        ["lambda-run", "kinesis_to_dynamodb"],  # --stream is required
    ],
)
def test_the_command_check_rejects_what_the_cli_rejects(args: list[str]) -> None:
    with pytest.raises(click.UsageError):
        speedlayer_command(args)


def test_speedlayer_variables_are_real_settings(compose: Compose) -> None:
    """A misspelt SPEEDLAYER_* variable would be ignored in silence (extra="ignore")."""
    fields = set(Settings.model_fields)
    for name, service in services(compose).items():
        for variable in service.get("environment", {}) or {}:
            if variable.startswith("SPEEDLAYER_"):
                assert variable.removeprefix("SPEEDLAYER_").lower() in fields, (name, variable)
    for dockerfile in ("Dockerfile", "infra/flink/Dockerfile"):
        for stage in stages(ROOT / dockerfile):
            for line in stage.lines:
                keyword, _, rest = line.partition(" ")
                if keyword in ("ENV", "ARG"):
                    for word in rest.split():
                        variable = word.split("=", 1)[0]
                        if variable.startswith("SPEEDLAYER_"):
                            setting = variable.removeprefix("SPEEDLAYER_").lower()
                            assert setting in fields, (dockerfile, variable)
