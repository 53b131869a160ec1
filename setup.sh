#!/usr/bin/env bash
# Install glmtui into a virtual environment (.venv, or $GLMTUI_VENV) with the torch build this machine can use.
#
#   ./setup.sh            create the environment if needed, install torch and glmtui (with the test tools)
#   ./setup.sh --dry-run  only print the commands it would run
#
# torch: an installed one is kept. Otherwise, without a working `nvidia-smi` (no NVIDIA driver), the CPU build
# from PyTorch's CPU index, falling back to the pinned CPU wheel (+cpu) the package index offers; with a driver, the
# newest CUDA build that driver supports. GLMTUI_TORCH=cpu or GLMTUI_TORCH=cu126 (etc.) overrides the choice.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION="2.13.0"
CUDA_BUILDS=(cu130 cu128 cu126 cu118)  # newest first; cuXY needs a driver that reports CUDA X.Y or later
PYTORCH_INDEX="https://download.pytorch.org/whl"
VENV="${GLMTUI_VENV:-.venv}"
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1

say() { printf 'setup: %s\n' "$*"; }

# Print a command, then run it (unless --dry-run).
run() {
    printf '+ %s\n' "$*"
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
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
    if [[ $choice == cpu ]]; then
        # PyTorch's CPU index first; where it cannot be reached, the same CPU build from the configured index
        # (pinned with its +cpu label, so that pip can never fall back to a CUDA build and its libraries).
        run "$PYTHON" -m pip install --timeout 30 --retries 1 "torch==$TORCH_VERSION" \
            --index-url "$PYTORCH_INDEX/cpu" || {
            say "PyTorch's CPU index failed: trying torch==$TORCH_VERSION+cpu from the configured package index"
            run "$PYTHON" -m pip install "torch==$TORCH_VERSION+cpu" || {
                say "no CPU build of torch $TORCH_VERSION could be installed; make $PYTORCH_INDEX/cpu reachable" \
                    "or point pip at a CPU wheel (pip's find-links), then run ./setup.sh again"
                exit 1
            }
        }
    else
        run "$PYTHON" -m pip install "torch==$TORCH_VERSION" --index-url "$PYTORCH_INDEX/$choice"
    fi
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
