#!/usr/bin/env bash
# Debian packages the tests need: Open MPI (mpirun, headers for Horovod/mpi4py) for the multi-process tests,
# Chromium (headless, driven by Playwright with executable_path) and a font for the `lanex ui` browser tests.
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev openssh-client \
    chromium fonts-dejavu-core >/dev/null
