#!/usr/bin/env bash
# Train recjax on a Cloud TPU VM slice: create it (optional), copy this
# checkout to every worker, install, and run one process per worker. On
# TPU slices JAX finds its peers itself (RECJAX_DISTRIBUTED=1 -> 
# jax.distributed.initialize() with cluster detection), so no coordinator
# flags are needed.
#
#   launch/tpu_vm.sh --name=recjax-v5p --zone=us-east5-a \
#       --accelerator=v5p-32 --config=configs/lightgcn_gowalla.py \
#       --workdir=/gcs/BUCKET/runs/gowalla [--create] [--delete] \
#       [--project=P] [--version=v2-alpha-tpuv5] [--dry_run] \
#       [-- recjax.main flags...]
#
# --workdir must be a path every worker sees (e.g. a bucket mounted with
# gcsfuse at the same path on each worker): orbax and the metric writers
# write there from every worker. --dry_run prints the gcloud commands
# instead of running them. Everything after `--` goes to recjax.main.
set -euo pipefail

NAME= ZONE= ACCEL= CONFIG= WORKDIR= PROJECT= VERSION=v2-alpha-tpuv5
CREATE=0 DELETE=0 DRY=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator=*) ACCEL=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --create) CREATE=1 ;;
    --delete) DELETE=1 ;;
    --dry_run) DRY=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "error: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
for v in NAME ZONE CONFIG WORKDIR; do
  if [[ -z "${!v}" ]]; then
    echo "error: --$(tr '[:upper:]' '[:lower:]' <<< "$v") is required" >&2
    exit 2
  fi
done
if [[ $CREATE -eq 1 && -z "$ACCEL" ]]; then
  echo "error: --create needs --accelerator (e.g. v5p-32)" >&2; exit 2
fi
[[ -f "$CONFIG" ]] || { echo "error: config '$CONFIG' does not exist" >&2; exit 2; }

run() { if [[ $DRY -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
G=(gcloud compute tpus tpu-vm)
P=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && P+=(--project="$PROJECT")
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if [[ $CREATE -eq 1 ]]; then
  run "${G[@]}" create "$NAME" "${P[@]}" --accelerator-type="$ACCEL" \
      --version="$VERSION"
fi
# Tracked files only: no virtualenv, runs or data copies.
ARCHIVE=/tmp/recjax_$NAME.tar.gz
run git -C "$ROOT" archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${G[@]}" scp "$ARCHIVE" "$NAME:~/recjax.tar.gz" "${P[@]}" --worker=all
# Every argument is quoted for the remote shell (flags like
# --config.graph.fanouts='(4, 3)' survive).
ARGS=$(printf ' %q' "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
REMOTE="rm -rf ~/recjax && mkdir ~/recjax && tar xzf ~/recjax.tar.gz -C ~/recjax \
 && cd ~/recjax && make install JAX_EXTRA=tpu \
 && RECJAX_DISTRIBUTED=1 .venv/bin/python -m recjax.main$ARGS"
run "${G[@]}" ssh "$NAME" "${P[@]}" --worker=all --command="$REMOTE"
if [[ $DELETE -eq 1 ]]; then
  run "${G[@]}" delete "$NAME" "${P[@]}" --quiet
fi
