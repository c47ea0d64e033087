#!/usr/bin/env bash
# Debian packages needed by the multi-process tests: Open MPI (mpirun, headers for Horovod/mpi4py).
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev openssh-client >/dev/null
