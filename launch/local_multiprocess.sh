#!/usr/bin/env bash
# Starts N vtd.main processes on this machine that form one multi-process JAX
# job over 127.0.0.1, to exercise the multi-host code paths (process 0 only
# logging/checkpointing, per-host data sharding, collectives) without a
# cluster.
#
# Usage:
#   launch/local_multiprocess.sh N PORT [--] <vtd.main args...>
#   e.g. launch/local_multiprocess.sh 2 12355 -- \
#          --config=configs/teachtext.py --workdir=/tmp/tt --config.train.num_steps=10
#
# Process i runs
#   $PYTHON -m vtd.main <args> --config.distributed.mode=on
#     --config.distributed.coordinator_address=127.0.0.1:PORT
#     --config.distributed.num_processes=N --config.distributed.process_id=i
# with stdout+stderr in ${VTD_LOG_DIR:-.}/process_i.log. PORT must be free;
# process 0 hosts the coordinator on it.
#
# Environment:
#   PYTHON        interpreter (default: the repository's .venv/bin/python if there is
#                 one, else python3 from PATH).
#   VTD_LOG_DIR   directory for the per-process logs (default: .).
#   JAX_PLATFORMS defaults to cpu: N processes on one GPU box would otherwise
#                 each try to claim every local GPU.
#
# Exits 0 if all processes succeed; otherwise prints which ones failed (with
# the end of their logs) and exits 1.

set -euo pipefail

usage() {
  echo "usage: $0 N PORT [--] <vtd.main args...>" >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
num_processes=$1
port=$2
shift 2
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: error: N must be a positive integer, got '$num_processes'" >&2
  usage
fi
if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  echo "local_multiprocess.sh: error: PORT must be in 1..65535, got '$port'" >&2
  usage
fi
if [[ "${1:-}" == "--" ]]; then
  shift
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
log_dir="${VTD_LOG_DIR:-.}"
mkdir -p "$log_dir"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

pids=()
# If we are interrupted (Ctrl-C) or fail half-way, do not leave processes
# behind: the survivors would wait for their peers until JAX times out.
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((i = 0; i < num_processes; i++)); do
  log="$log_dir/process_$i.log"
  "$PYTHON" -m vtd.main "$@" \
    --config.distributed.mode=on \
    --config.distributed.coordinator_address="127.0.0.1:$port" \
    --config.distributed.num_processes="$num_processes" \
    --config.distributed.process_id="$i" \
    >"$log" 2>&1 &
  pids+=("$!")
  echo "local_multiprocess.sh: started process $i (pid $!), log: $log" >&2
done

failed=()
for ((i = 0; i < num_processes; i++)); do
  # `wait PID` returns that process's exit status; `|| status=$?` keeps
  # `set -e` from aborting before we have collected everybody.
  status=0
  wait "${pids[$i]}" || status=$?
  if ((status != 0)); then
    failed+=("$i")
    echo "local_multiprocess.sh: process $i failed with exit code $status;" \
         "last lines of $log_dir/process_$i.log:" >&2
    tail -n 20 "$log_dir/process_$i.log" | sed "s/^/  [process $i] /" >&2 || true
  fi
done
pids=()  # All reaped; nothing for the EXIT trap to kill.

if ((${#failed[@]} > 0)); then
  echo "local_multiprocess.sh: FAILED: process(es) ${failed[*]} of $num_processes" >&2
  exit 1
fi
echo "local_multiprocess.sh: all $num_processes processes succeeded" >&2
