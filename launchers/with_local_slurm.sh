#!/usr/bin/env bash
# Run a command (make test: the test suite) with the local two-node SLURM test cluster up, and take it down after.
#
#   bash launchers/with_local_slurm.sh CMD [ARGS...]
#
# Uses ../shared/tools/slurm_local.sh (a real Slurm 22.05: nodes n1 n2, partition debug, accounting)
# where it exists and we are root; a trap stops the cluster on any exit (success, failure, Ctrl-C).
# A cluster that was already up is used and left running. Without the script, as non-root, with
# SLURM_LOCAL=0, or when it fails to start, CMD runs anyway and the SLURM tests skip, saying why.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=${SLURM_LOCAL_SH:-$ROOT/../shared/tools/slurm_local.sh}
CONF=${SLURM_LOCAL_DIR:-/tmp/slurm_local}/etc/slurm.conf
say() { echo "[with_local_slurm] $*" >&2; }

if [ "${SLURM_LOCAL:-1}" = 0 ]; then
  say "SLURM_LOCAL=0: no test cluster; the SLURM tests will skip"
elif [ ! -f "$SCRIPT" ]; then
  say "$SCRIPT not found: no test cluster; the SLURM tests will skip"
elif [ -f "$CONF" ] && SLURM_CONF=$CONF timeout 20 sinfo -h >/dev/null 2>&1; then
  say "the test cluster is already up: using it and leaving it running"
  export SLURM_CONF=$CONF
elif [ "$(id -u)" != 0 ]; then
  say "not root: cannot start the test cluster; the SLURM tests will skip"
else
  trap 'say "stopping the test cluster"; bash "$SCRIPT" down >/dev/null 2>&1 || bash "$SCRIPT" down' EXIT
  trap 'exit 130' INT TERM
  say "starting the test cluster ($SCRIPT up)"
  if bash "$SCRIPT" up >&2; then
    export SLURM_CONF=$CONF
  else
    say "the test cluster did not start; the SLURM tests will skip"
  fi
fi
"$@"
