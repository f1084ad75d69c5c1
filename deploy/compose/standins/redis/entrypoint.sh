#!/bin/bash
# The official image's contract, reduced to what JOTC uses: no protected mode when no configuration
# file is given, and the server runs as the redis user.
set -euo pipefail
if [[ "${1:-}" == redis-server ]]; then
  shift
  if [[ "${1:-}" != *.conf ]]; then
    set -- --protected-mode no "$@"
  fi
  set -- redis-server "$@"
  echo "STAND-IN: Redis $(redis-server --version | grep -o 'v=[0-9.]*') from Debian, built by" \
    "scripts/standins; not the official redis image. Once a registry answers: docker compose down;" \
    "scripts/standins --remove" >&2
  [[ "$(id -u)" == 0 ]] && exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
