#!/usr/bin/env bash
# One recjax run as N processes on this machine: each process gets
# DEVICES_PER_PROCESS simulated CPU devices, the processes meet through a
# coordinator on 127.0.0.1 and exchange collectives over gloo (loopback).
# It is how multi-host code paths (jax.distributed, global arrays built
# from host data, orbax checkpoints written by every process) are tested
# without a cluster.
#
#   launch/local_multihost.sh N CONFIG [recjax.main flags...]
#   launch/local_multihost.sh 2 configs/quickstart.py
#   WORKDIR=/tmp/mh launch/local_multihost.sh 2 configs/tiny.py \
#       --config.train.num_steps=20
#
# Environment: DEVICES_PER_PROCESS (2), WORKDIR (a new temp dir, shared by
# the processes), PORT (a free port), PYTHON (.venv/bin/python if present).
# Each process writes stdout to WORKDIR/process_<i>.out and its log to
# WORKDIR/process_<i>.log; process 0's last stdout line (the run's JSON
# figures) is printed, and the exit status is the first failure's. Needs
# bash >= 5.1 (wait -n -p).
set -euo pipefail

usage="usage: $0 N CONFIG [recjax.main flags...]"
N=${1:?$usage}
CONFIG=${2:?$usage}
shift 2
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: N must be a positive integer, got '$N'. $usage" >&2; exit 2
fi
if [[ ! -f "$CONFIG" ]]; then
  echo "error: config file '$CONFIG' does not exist. $usage" >&2; exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"
  else PYTHON=python3; fi
fi
DEVICES=${DEVICES_PER_PROCESS:-2}
WORKDIR=${WORKDIR:-$(mktemp -d /tmp/recjax_multihost.XXXXXX)}
mkdir -p "$WORKDIR"
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
# Stopping the launcher stops its processes.
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES ${XLA_FLAGS:-}" \
  JAX_PLATFORMS=cpu PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m recjax.main --config="$CONFIG" --workdir="$WORKDIR" \
      --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" \
      --process_id="$i" "$@" > "$WORKDIR/process_$i.out" \
      2> "$WORKDIR/process_$i.log" &
  pids+=($!)
done
# Wait for whichever process ends first: if one fails, the others would
# block on collectives with a dead peer, so they are stopped.
running=("${pids[@]}")
while [[ ${#running[@]} -gt 0 ]]; do
  rc=0
  wait -n -p ended "${running[@]}" || rc=$?
  still=()
  for p in "${running[@]}"; do [[ $p != "$ended" ]] && still+=("$p"); done
  running=("${still[@]}")
  if [[ $rc -ne 0 ]]; then
    for ((i = 0; i < N; i++)); do [[ ${pids[$i]} == "$ended" ]] && break; done
    echo "error: process $i exited with status $rc; the end of" \
         "$WORKDIR/process_$i.log:" >&2
    tail -n 20 "$WORKDIR/process_$i.log" >&2
    tail -n 5 "$WORKDIR/process_$i.out" >&2
    kill "${pids[@]}" 2>/dev/null || true
    exit $rc
  fi
done
tail -n 1 "$WORKDIR/process_0.out"
