#!/usr/bin/env bash
# A federation on one machine: a 3-node NATS cluster with JetStream and two
# Coordinators, "east" and "west", joined through it (DESIGN section 9).
# Everything stops on Ctrl-C, SIGTERM or when any of it exits.
#
#   examples/federation.sh               # NATS cluster + east (5001) + west (5002)
#   examples/federation.sh --nats-only   # just the NATS cluster
#   examples/federation.sh -- --metrics 127.0.0.1:0   # extra flags for both Coordinators
#
# Environment (defaults in brackets):
#   NATS_PORTS          client ports of the 3 nodes, comma-separated [4222,4223,4224]
#   NATS_CLUSTER_PORTS  route ports [6222,6223,6224]
#   NATS_HTTP_PORTS     monitoring ports, used to wait for JetStream [8222,8223,8224]
#   EAST_PORT, WEST_PORT  the Coordinators' UDP ports [5001, 5002]
#   NATS_SERVER         the nats-server binary [nats-server on PATH, else /usr/sbin/nats-server]
#   CONEC_ACTORS        the conec-actors command [conec-actors]
#   WORKDIR             where configs, JetStream stores and logs go [a fresh temporary
#                       directory, removed on exit; a given one is kept]
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

nats_only=0
coord_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --nats-only) nats_only=1 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; coord_args=("$@"); break ;;
        *) echo "federation.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

IFS=, read -r -a client_ports <<< "${NATS_PORTS:-4222,4223,4224}"
IFS=, read -r -a route_ports <<< "${NATS_CLUSTER_PORTS:-6222,6223,6224}"
IFS=, read -r -a http_ports <<< "${NATS_HTTP_PORTS:-8222,8223,8224}"
east_port="${EAST_PORT:-5001}"
west_port="${WEST_PORT:-5002}"
conec=("${CONEC_ACTORS:-conec-actors}")
three_ports() {  # VARIABLE PORT...: exactly three ports
    local name="$1"
    shift
    if [ $# -ne 3 ]; then
        echo "federation.sh: $name needs 3 comma-separated ports, got '$*'" >&2
        exit 2
    fi
}
three_ports NATS_PORTS "${client_ports[@]}"
three_ports NATS_CLUSTER_PORTS "${route_ports[@]}"
three_ports NATS_HTTP_PORTS "${http_ports[@]}"

nats_server="${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}"
if [ ! -x "$nats_server" ]; then
    echo "federation.sh: nats-server not found (Debian: apt-get install nats-server)" >&2
    exit 1
fi

if [ -n "${WORKDIR:-}" ]; then
    workdir="$WORKDIR"
    keep_workdir=1
    mkdir -p "$workdir"
else
    workdir="$(mktemp -d "${TMPDIR:-/tmp}/conec-federation.XXXXXX")"
    keep_workdir=0
fi

pids=()      # every process started here, Coordinators last
stopping=0
# shellcheck disable=SC2317  # run by the EXIT trap, which shellcheck does not follow
cleanup() {
    local status=$? pid i
    [ "$stopping" = 1 ] && return
    stopping=1
    trap '' INT TERM
    # Coordinators first (they leave the federation cleanly), then NATS.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[i]}"
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$keep_workdir" = 0 ]; then
        rm -rf "$workdir"
    else
        echo "configs, stores and logs kept in $workdir"
    fi
    echo "federation.sh: stopped"
    exit "$status"
}
trap cleanup EXIT
# Ctrl-C or SIGTERM is how one stops it: a clean stop, status 0.
trap 'exit 0' INT TERM

http_ok() {  # URL: whether it answers 200
    if command -v curl >/dev/null; then
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "$1" 2>/dev/null
    fi
}

# -- the NATS cluster -------------------------------------------------------------
routes=""
for p in "${route_ports[@]}"; do
    routes="${routes:+$routes, }nats-route://127.0.0.1:$p"
done
urls=""
for i in 0 1 2; do
    name="n$i"
    mkdir -p "$workdir/$name"
    cat > "$workdir/$name.conf" <<EOF
server_name: $name
listen: 127.0.0.1:${client_ports[i]}
http: 127.0.0.1:${http_ports[i]}
jetstream { store_dir: "$workdir/$name" }
cluster {
  name: conec-federation
  listen: 127.0.0.1:${route_ports[i]}
  routes: [$routes]
}
EOF
    "$nats_server" -c "$workdir/$name.conf" > "$workdir/$name.log" 2>&1 &
    pids+=("$!")
    urls="${urls:+$urls,}nats://127.0.0.1:${client_ports[i]}"
done

# /healthz answers 200 once a node's JetStream is part of a cluster with a leader.
for i in 0 1 2; do
    for _ in $(seq 300); do
        http_ok "http://127.0.0.1:${http_ports[i]}/healthz" && break
        if ! kill -0 "${pids[i]}" 2>/dev/null; then
            echo "federation.sh: nats-server n$i exited:" >&2
            tail -n 20 "$workdir/n$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if ! http_ok "http://127.0.0.1:${http_ports[i]}/healthz"; then
        echo "federation.sh: nats-server n$i not healthy within 30 s:" >&2
        tail -n 20 "$workdir/n$i.log" >&2
        exit 1
    fi
done
echo "NATS cluster ready: $urls"
echo "NATS logs: $workdir/n0.log $workdir/n1.log $workdir/n2.log"

# -- the Coordinators -------------------------------------------------------------
start_coord() {  # NAME PORT: start one, wait until it listens, echo its output
    local name="$1" port="$2" log="$workdir/$1.log"
    "${conec[@]}" coord --cluster "$urls" --name "$name" --port "$port" \
        --state-dir "$workdir/state" "${coord_args[@]}" > "$log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 300); do
        grep -q "press Ctrl-C to stop" "$log" && break
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "federation.sh: Coordinator $name exited:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    grep -q "press Ctrl-C to stop" "$log" || {
        echo "federation.sh: Coordinator $name did not start within 30 s:" >&2
        cat "$log" >&2
        exit 1
    }
    sed -e '/press Ctrl-C to stop/d' -e "s/^/[$name] /" "$log"
}

if [ "$nats_only" = 0 ]; then
    # One after the other: they share the development CA in $workdir/state.
    start_coord east "$east_port"
    start_coord west "$west_port"
    ca="$(sed -n 's/^CA certificate: \(.*\)$/\1/p' "$workdir/east.log" | head -n 1)"
    cat <<EOF

Connect a client to either Coordinator; ids are one space across both:
    from pathlib import Path
    from conec_actors import Client, ClientConfig
    ca = Path("${ca:-CA-OF-THE-COORDINATORS}").read_bytes()
    alice = await Client.connect(ClientConfig("alice", "localhost", addr=("127.0.0.1", $east_port), ca=ca))
    bob = await Client.connect(ClientConfig("bob", "localhost", addr=("127.0.0.1", $west_port), ca=ca))
    send, recv = await alice.new_proxied_stream("bob")   # east -> NATS -> west
Coordinator logs: $workdir/east.log $workdir/west.log
EOF
fi

echo "press Ctrl-C to stop"
# Until a signal, or until any process exits (then everything stops).
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "federation.sh: a process exited (status $status); stopping the rest" >&2
exit 1
