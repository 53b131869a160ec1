#!/usr/bin/env bash
# Install glmtui into a virtual environment (.venv, or $GLMTUI_VENV) with the torch build this machine can use.
#
#   ./setup.sh            create the environment if needed, install torch and glmtui (with the test tools)
#   ./setup.sh --dry-run  only print the commands it would run
#
# torch: an installed one is kept. Otherwise, without a working `nvidia-smi` (no NVIDIA driver), the CPU build;
# with a driver, the newest CUDA build that driver supports. GLMTUI_TORCH=cpu or GLMTUI_TORCH=cu126 (etc.) overrides
# the choice. It comes from PyTorch's index (or the mirror of it in GLMTUI_TORCH_INDEX), asked once with a short
# timeout first: where that index does not answer (an intranet, a mainland-China server), torch comes from the
# package index pip is configured with (PIP_INDEX_URL, pip.conf) instead, without waiting through pip's retries.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION="2.13.0"
CUDA_BUILDS=(cu130 cu128 cu126 cu118)  # newest first; cuXY needs a driver that reports CUDA X.Y or later
PYTORCH_INDEX="https://download.pytorch.org/whl"
TORCH_INDEX="${GLMTUI_TORCH_INDEX:-$PYTORCH_INDEX}"  # a mirror with the same layout: <index>/cpu, <index>/cu126 …
PROBE_TIMEOUT_S=5
VENV="${GLMTUI_VENV:-.venv}"
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1

say() { printf 'setup: %s\n' "$*"; }

# Print a command, then run it (unless --dry-run).
run() {
    printf '+ %s\n' "$*"
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# Whether the URL $1 answers within PROBE_TIMEOUT_S: one request, through the proxy pip would use, no retries.
index_answers() {
    python3 - "$1" "$PROBE_TIMEOUT_S" >/dev/null 2>&1 <<'PROBE'
import sys
import urllib.request

urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).close()
PROBE
}

# The CUDA version the driver reports ("12.4"), empty when there is no working nvidia-smi.
driver_cuda_version() {
    local report
    command -v nvidia-smi >/dev/null 2>&1 || return 0
    report="$(nvidia-smi 2>/dev/null)" || return 0
    sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' <<<"$report" | head -n 1
}

# The newest CUDA build in CUDA_BUILDS that a driver reporting CUDA $1 runs; empty when none does.
cuda_build_for() {
    local major minor build build_major build_minor
    IFS=. read -r major minor <<<"$1"
    for build in "${CUDA_BUILDS[@]}"; do
        build_major="${build:2:$((${#build} - 3))}"
        build_minor="${build: -1}"
        if ((major > build_major || (major == build_major && minor >= build_minor))); then
            echo "$build"
            return 0
        fi
    done
}

install_torch() {
    local choice="${GLMTUI_TORCH:-}" cuda
    if [[ -z $choice ]]; then
        cuda="$(driver_cuda_version)"
        if [[ -z $cuda ]]; then
            say "no working nvidia-smi: installing the CPU build of torch"
            choice=cpu
        else
            choice="$(cuda_build_for "$cuda")"
            if [[ -z $choice ]]; then
                say "the NVIDIA driver supports CUDA $cuda, older than every torch $TORCH_VERSION build" \
                    "(${CUDA_BUILDS[*]}); update the driver, or run GLMTUI_TORCH=cpu ./setup.sh for the CPU build"
                exit 1
            fi
            say "the NVIDIA driver supports CUDA $cuda: installing torch built for $choice"
        fi
    fi
    local index="$TORCH_INDEX/$choice"
    if index_answers "$index/torch/"; then
        say "$index answers: installing torch $TORCH_VERSION ($choice) from it"
        run "$PYTHON" -m pip install "torch==$TORCH_VERSION" --index-url "$index" && return 0
        say "installing from $index failed"
    elif [[ -n ${GLMTUI_TORCH_INDEX:-} ]]; then
        say "$index (GLMTUI_TORCH_INDEX) could not be reached (one try, ${PROBE_TIMEOUT_S} s timeout)"
    else
        say "$index could not be reached (one try, ${PROBE_TIMEOUT_S} s timeout); GLMTUI_TORCH_INDEX names a" \
            "mirror of it"
    fi
    install_torch_from_package_index "$choice"
}

# torch from the package index pip is configured with, for when the PyTorch index cannot be used: the CPU build is
# pinned with its +cpu label, so that pip can never fall back to a CUDA build and its libraries.
install_torch_from_package_index() {
    local configured="pip's configured package index" wheel="torch==$TORCH_VERSION"
    if [[ -n ${PIP_INDEX_URL:-} ]]; then  # shown without the user:token part an intranet index URL may hold
        configured="$(sed 's#//[^/@]*@#//#' <<<"$PIP_INDEX_URL") (PIP_INDEX_URL)"
    fi
    if [[ $1 == cpu ]]; then
        wheel="torch==$TORCH_VERSION+cpu"
        say "installing $wheel from $configured"
    else
        say "installing $wheel from $configured: its Linux wheel is built for one CUDA version, not chosen for" \
            "this driver"
    fi
    run "$PYTHON" -m pip install "$wheel" || {
        say "torch $TORCH_VERSION could not be installed; make $TORCH_INDEX/$1 reachable (or set" \
            "GLMTUI_TORCH_INDEX to a mirror of it), or point pip at a torch wheel (pip's find-links), then run" \
            "./setup.sh again"
        exit 1
    }
}

if [[ -x "$VENV/bin/python" ]]; then
    say "using the virtual environment $VENV"
else
    run python3 -m venv "$VENV"
fi
PYTHON="$VENV/bin/python"

installed="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ -n $installed ]]; then
    say "keeping the installed torch $installed"
else
    install_torch
fi
say "installing glmtui and its dependencies (a few minutes)"
run "$PYTHON" -m pip install -q -e '.[test]'
say "done: $VENV/bin/glmtui opens the app, $VENV/bin/pytest runs the tests"
