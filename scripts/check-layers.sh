#!/usr/bin/env bash
# The layering rules that can be checked mechanically (ARCHITECTURE.md,
# "Layers"). Run by .ci/run; fails with what broke which rule.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

# 1. baton-shared does no I/O: no tokio, redb or rumqttc in its tree.
if cargo tree -p baton-shared -e normal --locked --prefix none | grep -E '^(tokio|redb|rumqttc) '; then
  echo "layering: baton-shared depends on an I/O crate (above)" >&2
  fail=1
fi

# 2. baton-runtime decides nothing about the protocol and serves both
#    daemons: it depends on neither.
if cargo tree -p baton-runtime -e normal --locked --prefix none | grep -E '^baton-(agent|gateway) '; then
  echo "layering: baton-runtime depends on a daemon (above)" >&2
  fail=1
fi

# 3. The agent never depends on the gateway; the gateway depends on the
#    agent only through its tools feature (the demo).
if cargo tree -p baton-agent -e normal --locked --prefix none | grep -E '^baton-gateway '; then
  echo "layering: baton-agent depends on baton-gateway" >&2
  fail=1
fi
if cargo tree -p baton-gateway --no-default-features -e normal --locked --prefix none | grep -E '^baton-agent '; then
  echo "layering: baton-gateway without the tools feature depends on baton-agent" >&2
  fail=1
fi

# 4. Topics are formatted and parsed in one place: no `baton/v1/` literal
#    in the crates' code outside shared's topic module and the Mosquitto
#    ACL text (comments aside).
found=$(grep -rn 'baton/v1/' shared/src runtime/src agent/src gateway/src \
  | grep -v -E '^(shared/src/topic\.rs|gateway/src/mosquitto\.rs):' \
  | grep -v -E '^[^:]+:[0-9]+:\s*//' || true)
if [ -n "$found" ]; then
  echo "$found"
  echo "layering: a topic literal outside shared/src/topic.rs (above): use baton_shared::topic" >&2
  fail=1
fi

# 5. The gateway's modules import one way: each may use only modules
#    listed before it (ARCHITECTURE.md, "Layers"). `lib.rs` and `main.rs`
#    stand above all of them.
order=(metrics config auth store broker mosquitto own_chain rebuild registry fleet ingest operator
  export daily archive report upstream dispatch http server cli publisher bench fleet_bench tier_bench coord_bench console_bench fleet_sim fleet_run demo tools console command)
declare -A rank
for i in "${!order[@]}"; do rank[${order[$i]}]=$i; done
for f in gateway/src/*.rs gateway/src/*/*.rs; do
  # a module is a file of src/ or a directory of it (ingest/)
  m=${f#gateway/src/}
  m=${m%%/*}
  m=${m%.rs}
  [ "$m" = lib ] || [ "$m" = main ] && continue
  if [ -z "${rank[$m]+x}" ]; then
    echo "layering: gateway/src/$m.rs is not in the module order of scripts/check-layers.sh" >&2
    fail=1
    continue
  fi
  # crate::x paths, and the names inside `use crate::{a, b::c}`
  used=$( { grep -oE 'crate::[a-z_]+' "$f" || true; } | sed 's/crate:://'
          { grep -oE 'crate::\{[^}]*\}' "$f" || true; } | sed 's/crate::{//; s/}//' | tr ',' '\n' | sed 's/^ *//; s/::.*//')
  used=$(printf '%s\n' "$used" | sort -u)
  for u in $used; do
    [ -z "$u" ] && continue
    if [ -z "${rank[$u]+x}" ]; then continue; fi
    if (( rank[$u] >= rank[$m] )) && [ "$u" != "$m" ]; then
      echo "layering: gateway/src/$m.rs uses crate::$u, which stands above it" >&2
      fail=1
    fi
  done
done

exit "$fail"
