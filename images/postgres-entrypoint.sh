#!/bin/sh
# Starts PostgreSQL 15 in the foreground, logging to stderr. On the first start (PGDATA
# empty) it creates the cluster with superuser POSTGRES_USER (password POSTGRES_PASSWORD,
# SCRAM over TCP from anywhere) and database POSTGRES_DB, as the official postgres image
# does. Extra arguments go to postgres (e.g. -c max_connections=50).
set -eu

BIN=/usr/lib/postgresql/15/bin
PGDATA=${PGDATA:-/var/lib/postgresql/data/pgdata}
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

say() {
  echo "postgres-entrypoint: $*" >&2
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    say "error: set POSTGRES_PASSWORD (the password of $POSTGRES_USER)"
    exit 1
  fi
  say "initializing $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  "$BIN/initdb" --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" |
      "$BIN/postgres" --single -D "$PGDATA" postgres >/dev/null
  fi
fi

say "starting PostgreSQL on port 5432"
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
