#!/usr/bin/env bash
# The archive's figures (BENCHMARKS.md, "Archive"): a throwaway PostgreSQL
# cluster in a temporary directory (as the postgres user under root; fsync
# on, as a real archive runs), then
#   1. `baton-gateway bench --archive`: durable ingest without and with the
#      archive, and the rows/s PostgreSQL took, in the same run;
#   2. `baton-gateway simulate --archive` (unless SIMULATE=0): the archive's
#      lag behind the top of a whole fleet, of the shape given (default:
#      the largest that holds here, BENCHMARKS.md "The fleet at full size").
# Usage: [BENCH=0] [SIMULATE=0] [BENCH_AGENTS=10,100,1000] [BENCH_ENTRIES=262144]
#        scripts/archive-bench.sh [simulate flags…]
# Needs PostgreSQL's server programs (Debian: postgresql) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
sim=("$@")
[ ${#sim[@]} -gt 0 ] || sim=(--agents 3000 --clusters 3 --sectors 1 --rate 1 --window 60s)
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL server programs not found (apt install postgresql)" >&2; exit 1; }
cargo build --release -p baton-gateway
dir=$(mktemp -d /tmp/baton-archive-bench.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir"
  as_pg=(setpriv --reuid="$(id -u postgres)" --regid="$(id -g postgres)" --clear-groups)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U baton --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$dir/data" -c max_wal_size=4GB >"$dir/postgres.log" 2>&1 &
pg=$!
trap 'kill -INT $pg 2>/dev/null; wait $pg 2>/dev/null; rm -rf "$dir"' EXIT
until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; do sleep 0.2; done
"$bin/createdb" -h 127.0.0.1 -p "$port" -U baton baton
url="postgres://baton@127.0.0.1:$port/baton"
if [ "${BENCH:-1}" != 0 ]; then
  echo "== bench --archive (PostgreSQL $("$bin/postgres" --version | awk '{print $3}'), fsync on)"
  target/release/baton-gateway bench --agents ${BENCH_AGENTS:-10,100,1000} --entries ${BENCH_ENTRIES:-262144} --no-mosquitto --archive "$url"
fi
if [ "${SIMULATE:-1}" != 0 ]; then
  echo "== simulate ${sim[*]} --archive"
  target/release/baton-gateway simulate "${sim[@]}" --archive "$url"
fi
