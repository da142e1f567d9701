"""What the deploy tests read: docker-compose.yml as Compose reads it, the Dockerfiles' stages,
image references, and the speedlayer commands parsed as the real CLI parses them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from ruamel.yaml import YAML

from launch.cli import main

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = [
    ROOT / "Dockerfile",
    ROOT / "infra/flink/Dockerfile",
    ROOT / "infra/local/Dockerfile",
]
# The image the services run (./Dockerfile): its commands are arguments of `speedlayer`.
SPEEDLAYER_DOCKERFILE = "Dockerfile"
ONE_SHOT_CONDITION = "service_completed_successfully"
# An exact version: at least major.minor.patch, as the start of the tag.
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+([._+-][A-Za-z0-9_.+-]*)?$")


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it: YAML 1.2, merge keys (<<) applied."""
    data = YAML(typ="safe", pure=True).load(path.read_text())
    assert isinstance(data, dict)
    return data


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None
    digest: str | None


def parse_image(reference: str) -> ImageRef:
    """``[registry[:port]/]name[:tag][@sha256:...]``."""
    name, _, digest = reference.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return ImageRef(name, tag, digest or None)


def pinning_problem(reference: str) -> str | None:
    """None when ``reference`` names an exact version (and, if given, a well-formed digest)."""
    image = parse_image(reference)
    if image.digest is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", image.digest):
        return f"{reference}: malformed digest"
    if image.tag is None:
        return f"{reference}: no tag (that is latest)"
    if image.tag == "latest":
        return f"{reference}: latest"
    if not EXACT_TAG.match(image.tag):
        return f"{reference}: tag {image.tag!r} is not an exact version"
    return None


@dataclass
class Stage:
    image: str
    name: str | None
    lines: list[str] = field(default_factory=list)


def instructions(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        out.append(current + line)
        current = ""
    assert not current, f"{path}: a continuation without an end"
    return out


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    for line in instructions(path):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        elif keyword.upper() != "ARG" or found:
            assert found, f"{path}: {line!r} before FROM"
            found[-1].lines.append(line)
    return found


def speedlayer_command(args: list[str]) -> click.Context:
    """Parse ``speedlayer ARGS`` as the real CLI would (subcommands, options, values, required
    options), without running it; click's UsageError (or BadParameter) when it would refuse."""
    command: click.Command = main
    parent: click.Context | None = None
    name = "speedlayer"
    rest = list(args)
    while isinstance(command, click.Group):
        context = click.Context(command, info_name=name, parent=parent)
        if not rest:
            raise click.UsageError(f"`{name}` needs a command", context)
        resolved, sub, rest = command.resolve_command(context, rest)
        if sub is None or resolved is None:
            raise click.UsageError(f"no such command {rest[:1]}", context)
        parent, command, name = context, sub, resolved
    return command.make_context(name, rest, parent=parent)
