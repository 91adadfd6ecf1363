#!/usr/bin/env bash
# Run a command (make test: the test suite) with its own two-node SLURM test cluster up, and take it down after.
#
#   bash launchers/with_local_slurm.sh CMD [ARGS...]
#
# Uses ../shared/tools/slurm_local.sh (a real Slurm 22.05: nodes n1 n2, partition debug, accounting)
# where it exists and we are root. Every run starts a cluster of its own: a fresh SLURM_LOCAL_DIR and
# a SLURM_LOCAL_PORT_OFFSET whose ports are free, so two test runs on one machine never share a
# cluster, a port or a folder; a trap stops it on any exit (success, failure, Ctrl-C). A cluster
# someone else started is never used. With SLURM_LOCAL=0, without the script, as non-root, or when
# the cluster fails to start, CMD runs anyway with SLURM_LOCAL=0 exported: the SLURM tests skip, saying why.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT=${SLURM_LOCAL_SH:-$ROOT/../shared/tools/slurm_local.sh}
say() { echo "[with_local_slurm] $*" >&2; }

free_offset() {  # the first offset (10, 20, ...) whose slurmctld/slurmd/slurmdbd, node and MariaDB ports are free
  python3 - <<'EOF'
import socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
for off in range(10, 1000, 10):
    if all(free(p + off) for p in (6817, 6818, 6819, 17001, 17002, 13306)):
        print(off)
        break
EOF
}

if [ "${SLURM_LOCAL:-1}" = 0 ]; then
  say "SLURM_LOCAL=0: no test cluster; the SLURM tests will skip"
elif [ ! -f "$SCRIPT" ]; then
  say "$SCRIPT not found: no test cluster; the SLURM tests will skip"
  export SLURM_LOCAL=0
elif [ "$(id -u)" != 0 ]; then
  say "not root: cannot start a test cluster; the SLURM tests will skip"
  export SLURM_LOCAL=0
else
  SLURM_LOCAL_DIR=$(mktemp -d /tmp/slurm_local.XXXXXX) && chmod 755 "$SLURM_LOCAL_DIR"
  SLURM_LOCAL_PORT_OFFSET=$(free_offset)
  export SLURM_LOCAL_DIR SLURM_LOCAL_PORT_OFFSET
  trap 'say "stopping the test cluster in $SLURM_LOCAL_DIR"; bash "$SCRIPT" down >/dev/null 2>&1 || bash "$SCRIPT" down;
        rm -rf "$SLURM_LOCAL_DIR"' EXIT
  trap 'exit 130' INT TERM
  say "starting a test cluster in $SLURM_LOCAL_DIR (port offset $SLURM_LOCAL_PORT_OFFSET)"
  if bash "$SCRIPT" up >&2; then
    export SLURM_CONF=$SLURM_LOCAL_DIR/etc/slurm.conf
  else
    say "the test cluster did not start; the SLURM tests will skip"
    export SLURM_LOCAL=0
  fi
fi
"$@"
