#!/usr/bin/env bash
# Install (if missing) and start a real Redis server on localhost for the team compile cache's tests,
# with a password (the tests check it never shows). Prints the URL to use. Needs root (CI and dev
# machines here are). A team runs its own: see the README's "team compile cache".
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
port=${AUTOTUNE_TEST_REDIS_PORT:-6390}
password=team-cache-secret
if ! redis-cli -p "$port" -a "$password" --no-auth-warning ping >/dev/null 2>&1; then
  redis-server --port "$port" --bind 127.0.0.1 --requirepass "$password" --daemonize yes \
    --save "" --appendonly no --dir /tmp --logfile /tmp/autotune-test-redis.log >/dev/null
  for _ in $(seq 1 30); do
    redis-cli -p "$port" -a "$password" --no-auth-warning ping >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
echo "redis://:${password}@127.0.0.1:${port}/0"
