#!/usr/bin/env bash
# Build and install Horovod 0.28.1 from its PyPI sdist against the torch already installed in PYTHON's
# environment. Horovod's last release predates torch 2.1, whose headers need C++17: the sdist asks for
# C++14 (and gloo for C++11), so it is patched to C++17 before building (REFERENCE.md section 7), and
# the torch extension to C++20 when the installed torch's headers require it (torch 2.14 does).
#
# Usage: scripts/build_horovod.sh PYTHON
#
# Environment:
#   LANEX_HOROVOD_GPU=1      build for the trainer image: NCCL GPU operations, MPI and gloo controllers
#                            (needs nvcc, NCCL headers/library and an MPI implementation with mpicc).
#                            Default: CPU only, gloo controller, no MPI (what the tests here use).
#   LANEX_HOROVOD_MPI=1      also build the MPI controller in CPU mode (needs libopenmpi-dev).
#   LANEX_HOROVOD_FORCE=1    rebuild even when a working build is already installed.
#   LANEX_HOROVOD_VERBOSE=1  stream the compiler output instead of keeping it in a log file.
#   LANEX_HOROVOD_WHEEL_DIR  also copy the built wheel there (a multi-stage image installs it elsewhere).
#   MAKEFLAGS                parallel jobs for make (default -j2).
#   HOROVOD_*                passed through to Horovod's setup.py (e.g. HOROVOD_BUILD_CUDA_CC_LIST=80,90,
#                            HOROVOD_NCCL_HOME); NCCL from the nvidia-nccl pip wheel is found by itself.
set -euo pipefail

readonly HOROVOD_VERSION="0.28.1"
# sha256 of horovod-0.28.1.tar.gz as published on PyPI.
readonly HOROVOD_SDIST_SHA256="92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0"

die() { echo "build_horovod: error: $*" >&2; exit 1; }
log() { echo "build_horovod: $*"; }

[ $# -eq 1 ] || die "usage: $0 PYTHON (for example .venv/bin/python)"
PYTHON="$1"
[ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON '$PYTHON' is not an executable"

GPU="${LANEX_HOROVOD_GPU:-0}"
WITH_MPI="${LANEX_HOROVOD_MPI:-0}"
[ "$GPU" = "1" ] && WITH_MPI=1
if [ "$GPU" = "1" ]; then FLAVOUR="gpu/nccl+mpi+gloo"; elif [ "$WITH_MPI" = "1" ]; then FLAVOUR="cpu/mpi+gloo"; else FLAVOUR="cpu/gloo"; fi

# The installed build is good when it is this version, imports against the current torch (a torch
# upgrade breaks its C++ ABI and shows up here as an undefined symbol) and has what this flavour needs.
check_installed() {
    local want="hvd.gloo_built()"
    [ "$WITH_MPI" = "1" ] && want="$want and hvd.mpi_built()"
    [ "$GPU" = "1" ] && want="$want and hvd.nccl_built()"
    "$PYTHON" - <<EOF
import horovod, horovod.torch as hvd, torch
assert horovod.__version__ == "$HOROVOD_VERSION", horovod.__version__
assert $want
print(f"horovod {horovod.__version__} ($FLAVOUR) already installed, imports against torch {torch.__version__}")
EOF
}

if [ "${LANEX_HOROVOD_FORCE:-0}" != "1" ] && check_installed 2>/dev/null; then
    exit 0
fi

"$PYTHON" -c "import torch" 2>/dev/null \
    || die "torch is not importable by $PYTHON: install the trainer extra first (Horovod builds against it)"

# Horovod's runtime dependencies (cloudpickle, psutil, pyyaml, packaging) are pinned by the project's lock
# file when the script runs from a checkout or from an image holding requirements/.
LOCK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements/lock.txt"
CONSTRAINTS=(); [ -f "$LOCK" ] && CONSTRAINTS=(-c "$LOCK")

# Built wheels are cached per (Horovod, flavour, torch, Python) like pip's own wheel cache, so a new
# virtual environment on the same machine (a fresh CI clone) installs in seconds instead of rebuilding.
CACHE_KEY="$("$PYTHON" -c "import sys, torch; print(f'$HOROVOD_VERSION-${FLAVOUR//\//-}-torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')")"
CACHE_DIR="${LANEX_HOROVOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lanex/horovod}/$CACHE_KEY"
if [ "${LANEX_HOROVOD_FORCE:-0}" != "1" ] && CACHED="$(ls "$CACHE_DIR"/horovod-*.whl 2>/dev/null | head -n 1)" && [ -n "$CACHED" ]; then
    "$PYTHON" -m pip install -q --no-cache-dir "${CONSTRAINTS[@]}" "$CACHED"
    if check_installed; then
        log "installed the cached build $CACHED"
        exit 0
    fi
    log "the cached build $CACHED does not work here; rebuilding"
    rm -rf "$CACHE_DIR"
fi

# Console scripts (horovodrun) and any pip cmake live next to the interpreter; setup.py runs `cmake` from PATH.
SCRIPTS_DIR="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$SCRIPTS_DIR:$PATH"

command -v cmake >/dev/null 2>&1 \
    || die "cmake is not on PATH: apt-get install cmake (>= 3.13), or pip install cmake into $SCRIPTS_DIR"
CMAKE_VERSION="$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')"
CMAKE_MAJOR="${CMAKE_VERSION%%.*}"
# gloo asks for cmake_minimum_required(2.8.12); cmake >= 4 refuses that unless told the minimum policy.
if [ "${CMAKE_MAJOR:-0}" -ge 4 ]; then
    export CMAKE_POLICY_VERSION_MINIMUM=3.5
fi
log "cmake $CMAKE_VERSION at $(command -v cmake)${CMAKE_POLICY_VERSION_MINIMUM:+, CMAKE_POLICY_VERSION_MINIMUM=$CMAKE_POLICY_VERSION_MINIMUM}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lanex-horovod.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download -q --no-binary :all: --no-deps --dest "$WORK" "horovod==$HOROVOD_VERSION"
SDIST="$WORK/horovod-$HOROVOD_VERSION.tar.gz"
[ -f "$SDIST" ] || die "pip download did not produce $SDIST"
echo "$HOROVOD_SDIST_SHA256  $SDIST" | sha256sum --check --quiet - \
    || die "$SDIST does not have the published sha256 $HOROVOD_SDIST_SHA256"
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/horovod-$HOROVOD_VERSION"

# patch FILE FROM TO: replace every FROM with TO, and fail if FROM was not there (a changed sdist must
# not silently build with the old standard).
patch_text() {
    local file="$SRC/$1" from="$2" to="$3"
    grep -qF -- "$from" "$file" || die "expected '$from' in $1 of the horovod $HOROVOD_VERSION sdist"
    "$PYTHON" - "$file" "$from" "$to" <<'EOF'
import sys
path, old, new = sys.argv[1:]
with open(path) as f:
    text = f.read()
with open(path, "w") as f:
    f.write(text.replace(old, new))
EOF
    grep -qF -- "$from" "$file" && die "'$from' still in $1 after patching"
    return 0
}
# The torch extension must use the standard torch's headers demand: C++17 for torch 2.1+, C++20 for recent ones
# (ATen.h stops with "C++20 or later compatible compiler is required"). Horovod's own code and gloo get 17.
TORCH_CXX="$("$PYTHON" -c '
import pathlib, re, torch
header = pathlib.Path(torch.__file__).parent / "include" / "ATen" / "ATen.h"
match = re.search(r"__cplusplus < (20\d\d)\d\dL", header.read_text()) if header.exists() else None
print(max(17, int(match.group(1)) - 2000) if match else 17)
')"
patch_text CMakeLists.txt "set(CMAKE_CXX_STANDARD 14)" "set(CMAKE_CXX_STANDARD 17)"
patch_text horovod/torch/CMakeLists.txt "set(CMAKE_CXX_STANDARD 14)" "set(CMAKE_CXX_STANDARD $TORCH_CXX)"
patch_text third_party/gloo/CMakeLists.txt "-std=c++11" "-std=c++17"
patch_text third_party/gloo/cmake/Cuda.cmake '"-std=c++11"' '"-std=c++17"'
# Horovod's CUDA kernels ask nvcc for C++11, which CUDA 13's headers no longer accept.
patch_text horovod/common/ops/cuda/CMakeLists.txt "set(CMAKE_CUDA_STANDARD 11)" "set(CMAKE_CUDA_STANDARD 17)"
if [ "$GPU" != "1" ]; then
    # Horovod turns on its CUDA code whenever torch is a CUDA build and torch finds any CUDA_HOME (even a
    # partial toolkit); the CPU flavour must not depend on what happens to be under /usr/local/cuda.
    patch_text cmake/Modules/FindPytorch.cmake \
        "print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)" "print(False)"
fi
log "patched the sdist: C++17, C++$TORCH_CXX for the torch extension ($FLAVOUR)"

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
if [ "$WITH_MPI" = "1" ]; then
    export HOROVOD_WITH_MPI=1
    unset HOROVOD_WITHOUT_MPI
else
    export HOROVOD_WITHOUT_MPI=1
    unset HOROVOD_WITH_MPI
fi
if [ "$GPU" = "1" ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK="${HOROVOD_NCCL_LINK:-SHARED}"
    command -v nvcc >/dev/null 2>&1 || [ -n "${CUDA_HOME:-}" ] || die "LANEX_HOROVOD_GPU=1 needs nvcc (a CUDA devel image)"
    # Link the NCCL that torch itself loads (the nvidia-nccl wheel in pytorch/pytorch images and pip venvs)
    # rather than a system libnccl of another version: both are libnccl.so.2, and the first loaded wins.
    # The wheel lacks the unversioned libnccl.so the linker looks for.
    if [ -z "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_LIB:-}" ]; then
        NCCL_DIR="$("$PYTHON" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)"
        if [ -n "$NCCL_DIR" ] && [ -f "$NCCL_DIR/include/nccl.h" ] && [ -f "$NCCL_DIR/lib/libnccl.so.2" ]; then
            [ -e "$NCCL_DIR/lib/libnccl.so" ] || ln -s libnccl.so.2 "$NCCL_DIR/lib/libnccl.so"
            export HOROVOD_NCCL_INCLUDE="$NCCL_DIR/include" HOROVOD_NCCL_LIB="$NCCL_DIR/lib"
            log "NCCL from the nvidia-nccl wheel torch uses: $NCCL_DIR"
        fi
    fi
else
    unset HOROVOD_GPU_OPERATIONS HOROVOD_GPU_ALLREDUCE HOROVOD_GPU_BROADCAST HOROVOD_GPU
fi
export MAKEFLAGS="${MAKEFLAGS:--j2}"

log "building horovod $HOROVOD_VERSION ($FLAVOUR, MAKEFLAGS=$MAKEFLAGS) against torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
START=$SECONDS
# --no-build-isolation: compile against the installed torch instead of downloading another one.
PIP_WHEEL=("$PYTHON" -m pip wheel --no-build-isolation --no-cache-dir --no-deps -v --wheel-dir "$WORK/wheel" "$SRC")
if [ "${LANEX_HOROVOD_VERBOSE:-0}" = "1" ]; then
    "${PIP_WHEEL[@]}"
elif ! "${PIP_WHEEL[@]}" >"$WORK/build.log" 2>&1; then
    KEPT_LOG="${TMPDIR:-/tmp}/lanex-horovod-build.log"
    cp "$WORK/build.log" "$KEPT_LOG"
    { grep -m 10 -A 6 -E "error:|CMake Error" "$KEPT_LOG" || tail -n 40 "$KEPT_LOG"; } >&2
    die "building the patched sdist failed: first errors above, full log in $KEPT_LOG"
fi
WHEEL="$(ls "$WORK"/wheel/horovod-"$HOROVOD_VERSION"-*.whl)"
log "built $(basename "$WHEEL") in $((SECONDS - START)) s"

"$PYTHON" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$WHEEL"
"$PYTHON" -m pip install -q --no-cache-dir "${CONSTRAINTS[@]}" "$WHEEL"
mkdir -p "$CACHE_DIR" && cp "$WHEEL" "$CACHE_DIR/" && log "cached the wheel in $CACHE_DIR"
if [ -n "${LANEX_HOROVOD_WHEEL_DIR:-}" ]; then
    mkdir -p "$LANEX_HOROVOD_WHEEL_DIR" && cp "$WHEEL" "$LANEX_HOROVOD_WHEEL_DIR/"
    log "kept the wheel in $LANEX_HOROVOD_WHEEL_DIR"
fi
log "installed horovod $HOROVOD_VERSION ($FLAVOUR) in $((SECONDS - START)) s"

check_installed >/dev/null || die "horovod was installed but 'import horovod.torch' fails or lacks $FLAVOUR"
horovodrun --check-build
