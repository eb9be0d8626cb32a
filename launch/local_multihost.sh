#!/usr/bin/env bash
# Run one lmc command as N JAX processes on this machine, joined over loopback.
#
#   launch/local_multihost.sh [--dry-run] [--port=PORT] [--devices_per_process=D] N CMD...
#   launch/local_multihost.sh 2 lmc run --config=configs/default.py --workdir=runs/mh
#
# Process i runs `CMD... --coordinator=127.0.0.1:PORT --num_processes=N --process_id=i`
# (so CMD is `lmc run ...` or `lmc sweep ...`); its output lines are prefixed "[i] ".
# With --devices_per_process=D each process gets D CPU devices (JAX_PLATFORMS=cpu,
# XLA_FLAGS=--xla_force_host_platform_device_count=D): the multi-host code path,
# collectives included (gloo), on one laptop. Exits with the first non-zero status.
set -euo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
port=""
devices=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --port=*) port="${1#*=}"; shift ;;
    --devices_per_process=*) devices="${1#*=}"; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "local_multihost.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || usage
n="$1"
shift
case "$n" in
  ''|*[!0-9]*|0) echo "local_multihost.sh: N must be a positive integer, got '$n'" >&2; exit 2 ;;
esac
if [ -n "$devices" ]; then
  case "$devices" in
    *[!0-9]*|0) echo "local_multihost.sh: --devices_per_process must be a positive integer" >&2; exit 2 ;;
  esac
fi
if [ -z "$port" ]; then
  # A free port, chosen by the kernel (python is there: lmc needs it).
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

env_prefix=()
if [ -n "$devices" ]; then
  env_prefix=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices")
fi

quote() {
  local out
  printf -v out '%q ' "$@"
  printf '%s\n' "${out% }"
}

if [ "$dry_run" = 1 ]; then
  for ((i = 0; i < n; i++)); do
    quote "${env_prefix[@]}" "$@" "--coordinator=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i"
  done
  exit 0
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

for ((i = 0; i < n; i++)); do
  cmd=("${env_prefix[@]}" "$@" "--coordinator=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i")
  "${cmd[@]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
done

# Wait for all; as soon as one fails, stop the others (they would wait for it in a
# collective forever) and exit with its status.
status=0
remaining=("${pids[@]}")
while [ "${#remaining[@]}" -gt 0 ]; do
  still=()
  for pid in "${remaining[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" != 0 ] && [ "$status" = 0 ]; then
      status=$rc
      cleanup
    fi
  done
  remaining=("${still[@]}")
  if [ "${#remaining[@]}" -gt 0 ]; then
    sleep 0.2
  fi
done
exit "$status"
