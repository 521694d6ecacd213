#!/usr/bin/env bash
# make demo: the embedded default. Starts the standalone binary (gateway, worker, marzban-sync
# and bot in one process) on a fresh SQLite file and the in-process bus, waits until it is
# ready, shows its health and metrics, then stops it with SIGTERM and checks it drains cleanly.
# KEEP=1 leaves it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/debug/standalone
[ -x "$bin" ] || { echo "build first: cargo build --workspace --bins" >&2; exit 1; }

work=$(mktemp -d -t acp-demo.XXXXXX)
# A free loopback port: try random high ports until one refuses connections.
port() { local p; while :; do p=$((20000 + RANDOM % 20000)); (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo $p; return; }; done; }
gw=$(port); wk=$(port); ms=$(port); bt=$(port)
start=$(date +%s%N)
stamp() { local ms=$(( ($(date +%s%N) - start) / 1000000 )); printf '[+%3d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }

stamp "starting standalone on sqlite://$work/acp.db (in-process bus)"
DATABASE_URL="sqlite://$work/acp.db?mode=rwc" LOG_DIR="$work/logs" RUST_LOG=${RUST_LOG:-warn} \
GATEWAY_BIND=127.0.0.1:$gw WORKER_BIND=127.0.0.1:$wk MARZBAN_SYNC_BIND=127.0.0.1:$ms BOT_BIND=127.0.0.1:$bt \
  "$bin" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$gw/health/ready" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "standalone exited early" >&2; exit 1; }
  sleep 0.1
done
stamp "gateway ready: $(curl -fsS "http://127.0.0.1:$gw/health/ready")"
for p in $wk $ms $bt; do
  stamp "127.0.0.1:$p ready: $(curl -fsS "http://127.0.0.1:$p/health/ready")"
done
stamp "tables: $(sqlite3 "$work/acp.db" .tables 2>/dev/null | tr -s ' \n' ' ' || echo '(sqlite3 CLI not installed)')"

if [ "${KEEP:-0}" = 1 ]; then
  stamp "KEEP=1: gateway at http://127.0.0.1:$gw (Ctrl-C to stop)"
  wait $pid
  exit 0
fi

kill -TERM $pid
wait $pid
stamp "stopped gracefully (exit $?)"
