#!/usr/bin/env bash
# Run one lmc command on every worker of a Cloud TPU VM slice (multi-host, one JAX
# process per worker, joined by jax.distributed).
#
#   launch/tpu_pod.sh [--dry-run] --tpu=NAME --zone=ZONE [--project=PROJECT]
#                     [--remote_dir=lmc] [--no-copy] [--no-install] -- CMD...
#   launch/tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b -- \
#       lmc run --config=configs/resnet20_cifar10.py --workdir=gs://my-bucket/runs/r20
#
# 1. copy: this checkout (without .git and runs/) is packed and copied to ~/REMOTE_DIR
#    on all workers (gcloud ... scp --worker=all);
# 2. install: `pip install -e '.[tpu]'` there on all workers;
# 3. run: CMD on --worker=all, with LMC_DISTRIBUTED=1 (lmc calls
#    jax.distributed.initialize(), which reads the slice's topology) and LMC_PROCESS_ID
#    set to the worker number (so only worker 0 of an `lmc sweep` takes its lock).
# --workdir must be storage every worker sees. Use a bucket (gs://BUCKET/DIR): nothing
# is mounted; `.[tpu]` installs gcsfs, and each worker needs credentials that may create
# and delete objects in the bucket (a TPU VM's service account, e.g. with
# roles/storage.objectUser; check with `gcloud storage ls gs://BUCKET` on a worker).
# A shared filesystem (NFS, Filestore) works too. Checkpoints are written collectively,
# each worker its own shards; worker 0 writes results, metrics, plots and the lock.
# --dry-run prints the exact gcloud commands instead of running them.
set -euo pipefail

usage() {
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

dry_run=0
tpu=""
zone=""
project=""
remote_dir="lmc"
copy=1
install=1
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --tpu=*) tpu="${1#*=}"; shift ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --project=*) project="${1#*=}"; shift ;;
    --remote_dir=*) remote_dir="${1#*=}"; shift ;;
    --no-copy) copy=0; shift ;;
    --no-install) install=0; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (put the lmc command after --)" >&2; usage ;;
  esac
done
if [ -z "$tpu" ] || [ -z "$zone" ]; then
  echo "tpu_pod.sh: --tpu=NAME and --zone=ZONE are required" >&2
  usage
fi
[ $# -ge 1 ] || { echo "tpu_pod.sh: no command given after --" >&2; usage; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone" "--worker=all")
if [ -n "$project" ]; then
  where+=("--project=$project")
fi

quote() {
  local out
  printf -v out '%q ' "$@"
  printf '%s\n' "${out% }"
}

run() {
  if [ "$dry_run" = 1 ]; then
    quote "$@"
  else
    "$@"
  fi
}

# The remote command: one string for `ssh --command`, evaluated by the worker's shell.
user_cmd="$(quote "$@")"
# shellcheck disable=SC2016  # expanded by the worker's shell, not here
worker_id='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'
remote_run="cd ~/$(printf '%q' "$remote_dir") && LMC_DISTRIBUTED=1 LMC_PROCESS_ID=$worker_id $user_cmd"

tarball="/tmp/lmc-$tpu.tar.gz"
if [ "$copy" = 1 ]; then
  run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=runs --exclude='*.egg-info' \
    --exclude=__pycache__ .
  run "${gcloud_tpu[@]}" scp "$tarball" "$tpu:/tmp/lmc.tar.gz" "${where[@]}"
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" \
    --command="mkdir -p ~/$(printf '%q' "$remote_dir") && tar -xzf /tmp/lmc.tar.gz -C ~/$(printf '%q' "$remote_dir")"
fi
if [ "$install" = 1 ]; then
  run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" \
    --command="cd ~/$(printf '%q' "$remote_dir") && python3 -m pip install -q -e '.[tpu]'"
fi
run "${gcloud_tpu[@]}" ssh "$tpu" "${where[@]}" --command="$remote_run"
