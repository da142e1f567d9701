#!/usr/bin/env bash
# The health check of the speedlayer Flink image (infra/flink/Dockerfile): healthy when the
# JobManager's REST API answers here (jobmanager), or when this container's TaskManager accepts
# connections on its RPC port (taskmanager; taskmanager.rpc.port, 6122 in docker-compose.yml).
wget -qO /dev/null "http://127.0.0.1:${REST_PORT:-8081}/overview" 2>/dev/null && exit 0
exec 3<>"/dev/tcp/127.0.0.1/${TASKMANAGER_RPC_PORT:-6122}"
