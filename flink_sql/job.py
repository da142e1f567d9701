"""Run a rendered Flink SQL job (flink_sql.JobSpec as JSON) with PyFlink.

Runs under the Flink virtualenv's Python (``make flink``; it pins its own pandas and pyarrow, so
it is kept apart from the project's). Imports only PyFlink and the standard library:

    python flink_sql/job.py SPEC.json [--jars a.jar,b.jar] [--plan]

``--plan`` prints the optimised plan instead of running. Without it the job runs: the statement
set of the inserts, until it finishes (bounded input) or this process is stopped (SIGTERM or
SIGINT cancel the job). Progress goes to stderr as JSON lines (``{"event": ...}``), which
``speedlayer flink run`` relays.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, **fields}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--jars", default="", help="comma-separated connector jars")
    parser.add_argument("--plan", action="store_true", help="print the plan, do not run")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())

    from pyflink.table import EnvironmentSettings, TableEnvironment

    started = time.monotonic()
    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    for key, value in spec["config"].items():
        config.set(key, value)
    jars = [Path(jar).resolve().as_uri() for jar in args.jars.split(",") if jar]
    if jars:
        config.set("pipeline.jars", ";".join(jars))
    for statement in spec["statements"]:
        env.execute_sql(statement)
    event("planned", seconds=round(time.monotonic() - started, 1))

    statement_set = env.create_statement_set()
    for insert in spec["inserts"]:
        statement_set.add_insert_sql(insert)
    if args.plan:
        print(statement_set.explain())
        return 0
    result = statement_set.execute()
    client = result.get_job_client()
    job_id = str(client.get_job_id()) if client is not None else ""
    event("running", job_id=job_id, seconds=round(time.monotonic() - started, 1))

    def cancel(signum: int, _frame: object) -> None:
        event("stopping", signal=signum)
        if client is not None:
            client.cancel().result()
        sys.exit(0)

    signal.signal(signal.SIGTERM, cancel)
    signal.signal(signal.SIGINT, cancel)
    result.wait()
    event("finished", job_id=job_id, seconds=round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
