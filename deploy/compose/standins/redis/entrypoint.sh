#!/bin/bash
set -euo pipefail
if [[ "${1:-}" == redis-server ]]; then
  shift
  if [[ "${1:-}" != *.conf ]]; then
    set -- --protected-mode no "$@"
  fi
  set -- redis-server "$@"
  [[ "$(id -u)" == 0 ]] && exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
