#!/bin/sh
# Enqueue one dispatch by hand: a Celery protocol-2 message built here, pushed with redis-cli,
# then the outcome polled from Redis. Needs redis-cli and base64 (coreutils).
#   examples/lpush.sh video-encode '{"profile": "720p"}'
# Environment: REDIS_URL (redis://127.0.0.1:6379/0), DISPATCHQ_QUEUE (dispatchq),
# REDIS_CLI (redis-cli), TIMEOUT seconds (60). Prints the result meta; exits with the
# outcome's exit code.
set -eu
job_id=$1
meta=${2:-"{}"}
url=${REDIS_URL:-redis://127.0.0.1:6379/0}
queue=${DISPATCHQ_QUEUE:-dispatchq}
cli=${REDIS_CLI:-redis-cli}
id=$(cat /proc/sys/kernel/random/uuid)
tag=$(cat /proc/sys/kernel/random/uuid)
request=$(printf '{"request_id": "%s", "job_id": "%s", "meta": %s}' "$id" "$job_id" "$meta")
body=$(printf '[[], %s, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]' \
  "$request" | base64 | tr -d '\n')
message=$(printf '{"body": "%s", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "sh", "task": "dispatchq.dispatch", "id": "%s", "root_id": "%s", "retries": 0}, "properties": {"correlation_id": "%s", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "%s"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "%s"}}' \
  "$body" "$id" "$id" "$id" "$queue" "$tag")
"$cli" -u "$url" LPUSH "$queue" "$message" >/dev/null
echo "request $id" >&2
waited=0
while :; do
  meta=$("$cli" -u "$url" GET "celery-task-meta-$id")
  if [ -n "$meta" ]; then
    echo "$meta"
    code=$(printf '%s' "$meta" | sed -n 's/.*"exit_code": *\([0-9]\).*/\1/p')
    exit "${code:-1}"
  fi
  [ "$waited" -ge "${TIMEOUT:-60}0" ] && { echo "no outcome yet for $id" >&2; exit 1; }
  sleep 0.1
  waited=$((waited + 1))
done
