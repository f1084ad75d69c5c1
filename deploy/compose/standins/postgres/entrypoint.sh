#!/bin/bash
# The official image's contract, reduced to what JOTC uses: a first start initialises PGDATA with
# POSTGRES_USER (default postgres) and POSTGRES_PASSWORD, creates POSTGRES_DB (default: the user),
# then the server listens on every interface of the container with password authentication.
set -euo pipefail
if [[ "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA"
  chown -R postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
[[ "${1:-}" == postgres ]] && shift
echo "STAND-IN: $(postgres --version) from Debian, built by scripts/standins; not the official" \
  "postgres image. Once a registry answers: docker compose down; scripts/standins --remove" >&2
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  # UTF-8 like the official image (a C-locale default would be SQL_ASCII).
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [[ "$database" != postgres ]]; then
    psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -c "CREATE DATABASE \"$database\"" >/dev/null
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "stand-in postgres: initialised $PGDATA (user $user, database $database)"
fi
exec postgres -c listen_addresses='*' "$@"
