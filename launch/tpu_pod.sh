#!/usr/bin/env bash
# Runs `python -m vtd.main ARGS...` on every worker of a Cloud TPU VM pod.
#
# Usage:
#   TPU_NAME=my-pod ZONE=us-central2-b REPO='~/vtd' \
#     launch/tpu_pod.sh --config=configs/teachtext.py --workdir=gs://bucket/runs/tt
#
# Environment:
#   TPU_NAME  (required) name of the TPU VM (pod slice).
#   ZONE      (required) its zone.
#   REPO      (required) checkout of this repository on the workers (same path
#             on every worker). Quote a leading '~/' (REPO='~/vtd') so it is
#             expanded on the workers, not here.
#   PYTHON    interpreter on the workers (default: python); '~/' as for REPO.
#   PROJECT   optional GCP project, passed as --project.
#   GCLOUD    gcloud binary (default: gcloud).
#
# A multi-host TPU job needs the same program started on all hosts at once;
# `--worker=all` does exactly that. vtd's default --config.distributed.mode=auto
# detects the pod from the TPU metadata and calls jax.distributed.initialize()
# with no arguments, so nothing host-specific is passed here. The workdir
# must be shared storage that every host can write to, e.g. gs://bucket/run:
#   * install vtd with the gcs extra on every worker (pip install -e '.[gcs]'):
#     vtd's own files (stage.json, results, artifacts, metrics) go through
#     etils.epath, which reaches gs:// through fsspec's gcsfs;
#   * orbax writes the checkpoints through tensorstore's own GCS driver;
#   * TensorBoard event files on gs:// need google-cloud-storage (tensorboardX);
#   * an object store has no file lock: make sure one job at a time uses a
#     workdir (local and NFS workdirs are locked, see README).

set -euo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
}

if [[ $# -eq 0 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 2
fi

missing=()
for var in TPU_NAME ZONE REPO; do
  if [[ -z "${!var:-}" ]]; then
    missing+=("$var")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "tpu_pod.sh: error: set ${missing[*]}" >&2
  usage
  exit 2
fi

PYTHON="${PYTHON:-python}"
GCLOUD="${GCLOUD:-gcloud}"

# POSIX single-quoting for the remote shell: the --command string is parsed
# again on every worker, so each argument must survive that verbatim (spaces,
# quotes, $, ...). printf %q would emit bash-only $'..' forms.
quote() {
  local s=${1//\'/\'\\\'\'}
  printf "'%s'" "$s"
}

# Like quote, but keeps a leading '~/' unquoted so the worker's shell expands
# it to the worker's home directory.
quote_path() {
  if [[ "$1" == "~/"* ]]; then
    printf '~/%s' "$(quote "${1#\~/}")"
  else
    quote "$1"
  fi
}

remote="cd $(quote_path "$REPO") && $(quote_path "$PYTHON") -m vtd.main"
for arg in "$@"; do
  remote+=" $(quote "$arg")"
done

gcloud_args=(compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_args+=(--project "$PROJECT")
fi

echo "tpu_pod.sh: on all workers of $TPU_NAME: $remote" >&2
exec "$GCLOUD" "${gcloud_args[@]}" --command "$remote"
