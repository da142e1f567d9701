#!/usr/bin/env bash
# Submit the speedlayer SQL job to the Flink session cluster with Flink's SQL client, once
# (docker-compose.yml, service flink-job; the image of infra/flink/Dockerfile):
#
#   * the script is $JOB_SQL (/opt/flink/sql/job.sql, rendered at build time by
#     `speedlayer flink plan --sql-only --env kafka --cluster`); the SQL client sends it to
#     rest.address (FLINK_PROPERTIES) and returns once the job is submitted;
#   * nothing is submitted while a job named $JOB_NAME is running (a second `docker compose up`);
#   * the job resumes from the newest retained checkpoint in $CHECKPOINT_DIR (the job keeps them
#     when cancelled, and the session cluster forgets its jobs when the JobManager restarts),
#     unless FLINK_JOB_FRESH=true.
#
# Settings (environment): FLINK_REST_URL (default http://$JOB_MANAGER_RPC_ADDRESS:8081),
# JOB_SQL, JOB_NAME, CHECKPOINT_DIR, FLINK_JOB_FRESH.
set -euo pipefail

FLINK_HOME=${FLINK_HOME:-/opt/flink}
JOB_SQL=${JOB_SQL:-$FLINK_HOME/sql/job.sql}
JOB_NAME=${JOB_NAME:-speedlayer-candles}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$FLINK_HOME/checkpoints}
REST_URL=${FLINK_REST_URL:-http://${JOB_MANAGER_RPC_ADDRESS:-jobmanager}:8081}
ACTIVE='INITIALIZING|CREATED|RUNNING|RESTARTING|FAILING|CANCELLING|RECONCILING|SUSPENDED'

overview=$(wget -qO- "$REST_URL/jobs/overview")
if grep -Eq "\"name\":\"$JOB_NAME\"[^{}]*\"state\":\"($ACTIVE)\"" <<<"$overview"; then
  echo "$JOB_NAME is already running on $REST_URL: not submitted again"
  exit 0
fi

script=$JOB_SQL
if [ "${FLINK_JOB_FRESH:-false}" != "true" ]; then
  newest=$(ls -1t "$CHECKPOINT_DIR"/*/chk-*/_metadata 2>/dev/null | head -n 1 || true)
  if [ -n "$newest" ]; then
    checkpoint=$(dirname "$newest")
    script=$(mktemp --suffix=.sql)
    {
      printf "SET 'execution.state-recovery.path' = 'file://%s';\n\n" "$checkpoint"
      cat "$JOB_SQL"
    } >"$script"
    echo "resuming $JOB_NAME from $checkpoint"
  fi
fi
echo "submitting $JOB_NAME ($script) to $REST_URL"
exec "$FLINK_HOME/bin/sql-client.sh" -f "$script"
