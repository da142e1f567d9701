"""The ingest service's numbers as CloudWatch metrics: one line of the embedded metric format
(EMF) on stdout per stats interval, when ``SPEEDLAYER_METRICS_NAMESPACE`` is set.

On ECS the task's log driver ships stdout to CloudWatch Logs, which turns each such line into
metric values (no agent, no ``cloudwatch:PutMetricData`` permission); the AWS stack
(``infra/cdk``) sets the namespace on the ingest task and alarms on :data:`FEED_LAG`. Dimension:
``Service`` = ``ingest``. Metrics:

* ``FeedLagSeconds``: now minus the end of the newest bar received (left out before the first);
* ``BarsPublished``: bars published in the interval, live and backfilled;
* ``BarsRejected``: bars rejected by validation in the interval;
* ``Reconnects``: WebSocket reconnects in the interval.
"""

from __future__ import annotations

import json

SERVICE_DIMENSION = "Service"
INGEST = "ingest"
FEED_LAG = "FeedLagSeconds"
BARS_PUBLISHED = "BarsPublished"
BARS_REJECTED = "BarsRejected"
RECONNECTS = "Reconnects"


def emf_line(
    namespace: str,
    service: str,
    now_ms: int,
    seconds: dict[str, float | None],
    counts: dict[str, int],
) -> str:
    """One EMF log line: ``seconds`` (unit Seconds; None values left out) and ``counts``
    (unit Count) under ``namespace`` with the dimension ``Service`` = ``service``."""
    values: dict[str, float | int] = {k: v for k, v in seconds.items() if v is not None}
    units = {name: "Seconds" for name in values}
    values.update(counts)
    units.update({name: "Count" for name in counts})
    document = {
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [[SERVICE_DIMENSION]],
                    "Metrics": [{"Name": name, "Unit": unit} for name, unit in units.items()],
                }
            ],
        },
        SERVICE_DIMENSION: service,
        **values,
    }
    return json.dumps(document, separators=(",", ":"))
