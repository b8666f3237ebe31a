#!/usr/bin/env bash
# Numbers for the L4 sidecar (not a test): 1 GB transfer throughput direct vs through
# two weft sidecars (A's outbound, B's inbound), and the RSS of an idle proxy and of
# one holding 1,000 open connections. Runs as root in two throwaway namespaces joined
# by a veth pair (no route anywhere else); removes everything on exit.
# Usage: bash tests/tools/l4-numbers.sh   (after cargo build --release --bins)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=target/$(rustc --print host-tuple)/release
kit=tests/tools/tcpkit.py
py=/usr/bin/python3
p="wfm$(printf '%04x' $((RANDOM)))"
a="$p-a" b="$p-b"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip -n "$a" link add eth0 type veth peer name eth0 netns "$b"
ip -n "$a" addr add 10.211.0.2/24 dev eth0; ip -n "$b" addr add 10.211.0.3/24 dev eth0
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; done
inb() { ip netns exec "$b" "$@"; }
ina() { ip netns exec "$a" "$@"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

inb $py $kit serve-zeros 9000 1000000000 >/dev/null & pids+=($!)
inb $py $kit serve-echo 9001 >/dev/null & pids+=($!)
sleep 1
echo "direct:        $(ina $py $kit drain 10.211.0.3 9000)"
echo "direct:        $(ina $py $kit drain 10.211.0.3 9000)"

for ns in "$a" "$b"; do
    ip netns exec "$ns" $bin/weft-init >/dev/null
    ip netns exec "$ns" setpriv --reuid 1337 --regid 1337 --clear-groups $bin/weft-proxy --service "$ns" --log warn & pids+=($!)
done
proxy_a=${pids[2]} proxy_b=${pids[3]}
sleep 1
echo "idle proxy RSS: A $(rss_kb "$proxy_a") kB, B $(rss_kb "$proxy_b") kB"
echo "two sidecars:  $(ina $py $kit drain 10.211.0.3 9000)"
echo "two sidecars:  $(ina $py $kit drain 10.211.0.3 9000)"
echo "after 2 GB RSS: A $(rss_kb "$proxy_a") kB, B $(rss_kb "$proxy_b") kB"
ina $py $kit hold 10.211.0.3 9001 1000 4 & holder=$!
sleep 3
echo "1,000 open connections RSS: A $(rss_kb "$proxy_a") kB, B $(rss_kb "$proxy_b") kB"
wait "$holder"
