#!/usr/bin/env bash
# What telemetry costs (a measurement, not a test): the same local mesh — a client
# pod and an nginx backend pod, each with its sidecar — driven by oha (32
# connections, 3 x 10 s closed loop after a warm-up), once with the proxies'
# traffic metrics on and once with --no-traffic-metrics; prints req/s and the two
# proxies' CPU milliseconds per 1,000 requests. Everything lives in weftctl's
# namespaces with a state directory of its own and is torn down at the end.
# Usage (root): cargo build --release --bins && cargo xtask bench --quick --setups direct
#   (the bench installs oha into target/bench-tools), then bash tests/tools/telemetry-cost.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
weftctl=$root/target/$(rustc --print host-tuple)/release/weftctl
oha=$root/target/bench-tools/bin/oha
[ -x "$weftctl" ] || { echo "build first: cargo build --release --bins" >&2; exit 1; }
[ -x "$oha" ] || { echo "oha missing: cargo xtask bench --quick --setups direct installs it" >&2; exit 1; }
work=$(mktemp -d /tmp/weft-telemetry-cost.XXXXXX)
export WEFT_STATE_DIR=$work/state
cleanup() { "$weftctl" down >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 8080;
    location / { return 200 "0123456789012345678901234567890123456789012345678901234567890123"; }
  }
}
NGINX
cat > "$work/mesh.yaml" <<MESH
services:
  backend:
    vip: 10.96.0.10
    ports: [{ port: 80, target_port: 8080, protocol: http }]
  client:
    vip: 10.96.0.20
    ports: [{ port: 80, target_port: 9000 }]
workloads:
  backend: { service: backend, command: "exec nginx -c $work/nginx.conf -g 'daemon off;'" }
  client: { service: client, command: "exec python3 -m http.server 9000" }
MESH

# The weft-proxy processes inside the mesh's namespaces.
proxies() {
    python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["netns"]))' \
        "$WEFT_STATE_DIR/local-mesh.json" |
        xargs -n1 ip netns pids |
        while read -r pid; do [ "$(cat /proc/"$pid"/comm)" = weft-proxy ] && echo "$pid"; done
}
# Their user + system CPU time, in clock ticks.
cpu_ticks() { for pid in $(proxies); do awk '{print $14 + $15}' /proc/"$pid"/stat; done | paste -sd+ | bc; }

run() {
    local label=$1; shift
    env "$@" "$weftctl" up -f "$work/mesh.yaml" >"$work/up-$label.log" 2>&1 &
    for _ in $(seq 1 120); do grep -q "weft: mesh ready" "$work/up-$label.log" && break; sleep 0.5; done
    grep -q "weft: mesh ready" "$work/up-$label.log" || { cat "$work/up-$label.log"; exit 1; }
    "$weftctl" exec client-0 -- "$oha" -z 3s -c 32 --no-tui http://backend/ >/dev/null
    local hz; hz=$(getconf CLK_TCK)
    for round in 1 2 3; do
        local before after out
        before=$(cpu_ticks)
        out=$("$weftctl" exec client-0 -- "$oha" -z 10s -c 32 --no-tui --output-format json http://backend/)
        after=$(cpu_ticks)
        echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
n = sum(d["statusCodeDistribution"].values())
cpu_ms = (int(sys.argv[3]) - int(sys.argv[2])) * 1000 / int(sys.argv[4])
rps = d["summary"]["requestsPerSec"]
label, rnd = sys.argv[1], sys.argv[5]
print(f"{label} round {rnd}: {rps:.0f} req/s, {cpu_ms / n * 1000:.1f} ms proxy CPU per 1k requests ({n} requests)")
' "$label" "$before" "$after" "$hz" "$round"
    done
    "$weftctl" down >/dev/null
    wait
}

run metrics-on
run metrics-off WEFT_NO_TRAFFIC_METRICS=true
