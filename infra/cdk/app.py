"""The CDK app of the AWS deployment: ``npx cdk synth`` / ``cdk deploy`` run this file from
``infra/cdk`` (cdk.json); infra/README.md lists the context options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script by the CDK CLI: the repository's packages
    sys.path.insert(0, str(ROOT))

import aws_cdk as cdk  # noqa: E402

from infra.cdk.speedlayer_stack import build  # noqa: E402
from speedlayer.errors import ConfigError  # noqa: E402


def main() -> int:
    app = cdk.App()
    try:
        build(app, os.environ)
    except (ConfigError, ValueError) as exc:  # a bad context value, a mismatched zip
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
