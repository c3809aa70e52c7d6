#!/usr/bin/env bash
# Install (if missing) and start a real PostgreSQL server on localhost for the tests, with a test
# role and database. Prints the SQLAlchemy URL to use. Needs root (CI and dev machines here are).
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
ready() {
  for _ in $(seq 1 30); do
    su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && return 0
    sleep 1
  done
}
ready
# the tests run up to four daemons at once, each with its workers' and trials' pools, beside the test
# process's own stores: Debian's 100 connections ran out once ("remaining connection slots are reserved")
if [ "$(su postgres -c "psql -qtAc 'show max_connections'")" -lt 400 ]; then
  su postgres -c "psql -qtAc 'ALTER SYSTEM SET max_connections = 400'" >/dev/null
  pg_ctlcluster "$version" main restart >/dev/null 2>&1
  ready
fi
su postgres -c "psql -qtAc \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='tuner') THEN CREATE ROLE tuner LOGIN PASSWORD 'tuner-secret-pw' CREATEDB; END IF; END \\\$\\\$;\"" >/dev/null
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='autotune_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O tuner autotune_test"
echo "postgresql+psycopg://tuner:tuner-secret-pw@127.0.0.1:5432/autotune_test"
