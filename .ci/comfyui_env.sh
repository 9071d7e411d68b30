#!/usr/bin/env bash
# The ComfyUI test environment CI uses, in one command (CPU; Linux x86_64, Python 3.11).
#
#   .ci/comfyui_env.sh 0.33.0             # or 0.29.0, or a path to a comfyui-*.tar.gz snapshot
#   .ci/comfyui_env.sh dev                # the pack's own test venv (no ComfyUI): the README's test command
#   .ci/comfyui_env.sh 0.33.0 --pytest -m comfyui    # build if needed, then run pytest there on this checkout
#
# Prints `COMFYUI_PATH=<tree>` and `PYTHON=<venv python>` (dev: only PYTHON), ready for `eval`; with `--pytest`
# it runs `python -m pytest -q ARGS` in that environment instead, on this checkout (COMFYUI_PATH set). The tree is
# unpacked from the snapshot in ../shared/vendor/ (WAN_NVFP4_VENDOR overrides), the venv gets ComfyUI's
# requirements with the pins below plus the pack's own dependencies (pyproject.toml: base + `test`). Both are
# cached under WAN_NVFP4_CI_CACHE (default ~/.cache/wan-nvfp4-ci), keyed by a hash of the snapshot / of
# everything that decides what gets installed; a half-built one is rebuilt. The pack itself is never
# installed: put a folder holding a `wan_nvfp4` symlink to the repository on PYTHONPATH (`.ci/run` does).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENDOR=${WAN_NVFP4_VENDOR:-$REPO/../shared/vendor}
CACHE=${WAN_NVFP4_CI_CACHE:-$HOME/.cache/wan-nvfp4-ci}
PY=${WAN_NVFP4_CI_PYTHON:-python3}

# ComfyUI venvs. torch 2.14.1 + torchvision 0.29.1: the pair that imports together on these machines (pip takes
# both from the local disk; a CUDA build that runs on the CPU). torchaudio 2.11.0 --no-deps imports beside it.
# triton 3.8.0: what torch 2.14.1 itself requires (triton~=3.8.0); inductor is built against it, and the
# ComfyUI interpreter test mode (tests/test_comfy_gpu.py) runs the pack's kernels with it.
COMFY_PINS=("torch==2.14.1" "torchvision==0.29.1" "triton==3.8.0")
COMFY_NODEPS=("torchaudio==2.11.0")
# dev venv: the versions the oracles and interpreter caveats were checked with (FORMATS.md); comfy-kitchen as
# its pure-Python wheel (eager backend, no CUDA libraries).
DEV_PINS=("torch==2.13.0" "triton==3.9.0" "torchao==0.18.0")
DEV_CK=0.2.40

log() { echo "[comfyui_env $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

hash_of() { sha256sum | cut -c1-16; }

# the pack's dependencies (base + the given extras) from pyproject.toml, one per line
pack_deps() {
    "$PY" - "$REPO/pyproject.toml" "$@" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = list(project["dependencies"])
for extra in sys.argv[2:]:
    deps += project["optional-dependencies"][extra]
print("\n".join(deps))
EOF
}

# venv at $1, built by the function $2 unless complete; a `.complete` marker is written last
ensure_venv() {
    local dir=$1 builder=$2 lock
    mkdir -p "$(dirname "$dir")"
    exec {lock}>"$dir.lock"
    flock "$lock" # one builder at a time; a second run waits, then reuses
    if [[ -f $dir/.complete ]]; then
        log "reusing $dir"
    else
        rm -rf "$dir"
        log "building $dir"
        "$PY" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --upgrade pip >&2
        # in the background so that `set -e` holds inside the builder (an `||` would switch it off)
        "$builder" "$dir" >&2 &
        wait $! || die "could not build $dir"
        touch "$dir/.complete"
    fi
    exec {lock}>&-
}

build_dev() {
    local venv=$1 pip="$1/bin/python -m pip" d
    printf '%s\n' "${DEV_PINS[@]}" >"$venv/constraints.txt"
    $pip install -q "${DEV_PINS[@]}"
    d=$(mktemp -d)
    $pip download -q --no-deps --only-binary=:all: --platform any --python-version 3.11 \
        "comfy-kitchen==$DEV_CK" -d "$d"
    $pip install -q --no-deps "$d"/comfy_kitchen-*.whl
    rm -rf "$d"
    pack_deps test triton >"$venv/pack-deps.txt"
    $pip install -q -r "$venv/pack-deps.txt" -c "$venv/constraints.txt"
}

build_comfy() {
    local venv=$1 pip="$1/bin/python -m pip"
    printf '%s\n' "${COMFY_PINS[@]}" >"$venv/constraints.txt"
    $pip install -q "${COMFY_PINS[@]}"
    $pip install -q --no-deps "${COMFY_NODEPS[@]}"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$TREE/requirements.txt" >"$venv/comfyui-requirements.txt"
    $pip install -q -r "$venv/comfyui-requirements.txt" -c "$venv/constraints.txt"
    pack_deps test >"$venv/pack-deps.txt"
    $pip install -q -r "$venv/pack-deps.txt" -c "$venv/constraints.txt"
    # torchaudio's metadata asks for its own torch, so `pip check` cannot judge this venv: import instead
    "$venv/bin/python" -c 'import torch, torchvision, torchaudio, triton, comfy_kitchen, safetensors
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__' >&2
}

[[ $# -ge 1 ]] || die "usage: $0 VERSION|SNAPSHOT.tar.gz|dev [--pytest PYTEST-ARGS...]"
RUN_PYTEST=0
if [[ ${2:-} == --pytest ]]; then
    RUN_PYTEST=1
elif [[ $# -gt 1 ]]; then
    die "unexpected arguments after $1: ${*:2}"
fi

# run pytest on this checkout: the pack is importable through a folder holding a `wan_nvfp4` link to it
run_pytest() { # PYTHON [COMFYUI_PATH]
    local path
    path=$(mktemp -d)
    ln -s "$REPO" "$path/wan_nvfp4"
    cd "$REPO"
    local rc=0
    COMFYUI_PATH=${2:-} PYTHONPATH=$path${PYTHONPATH:+:$PYTHONPATH} "$1" -m pytest -q "${PYTEST_ARGS[@]}" || rc=$?
    rm -rf "$path"
    exit $rc
}
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

if [[ $1 == dev ]]; then
    key=$( (
        echo "$pyver" "${DEV_PINS[@]}" "$DEV_CK"
        pack_deps test triton
        declare -f build_dev
    ) | hash_of)
    VENV=$CACHE/venv-dev-$key
    ensure_venv "$VENV" build_dev
    if ((RUN_PYTEST)); then
        PYTEST_ARGS=("${@:3}")
        run_pytest "$VENV/bin/python"
    fi
    echo "PYTHON=$VENV/bin/python"
    exit 0
fi

if [[ -f $1 ]]; then
    snapshot=$1
else
    shopt -s nullglob
    matches=("$VENDOR"/comfyui-"$1"-*.tar.gz)
    [[ ${#matches[@]} -eq 1 ]] || die "expected one snapshot comfyui-$1-*.tar.gz in $VENDOR, found ${#matches[@]}"
    snapshot=${matches[0]}
fi
name=$(basename "$snapshot" .tar.gz)

# the tree: unpacked once per snapshot content (never written to by the tests)
tree_key=$(hash_of <"$snapshot")
TREE_DIR=$CACHE/tree-$name-$tree_key
TREE=$TREE_DIR/ComfyUI
mkdir -p "$CACHE"
exec {tree_lock}>"$TREE_DIR.lock"
flock "$tree_lock"
if [[ ! -f $TREE_DIR/.complete ]]; then
    log "unpacking $snapshot"
    rm -rf "$TREE_DIR"
    mkdir -p "$TREE_DIR"
    tar xzf "$snapshot" -C "$TREE_DIR" || die "cannot unpack $snapshot"
    [[ -f $TREE/main.py && -f $TREE/requirements.txt ]] || die "$snapshot does not unpack to ComfyUI/"
    touch "$TREE_DIR/.complete"
fi
exec {tree_lock}>&-

key=$( (
    echo "$pyver" "${COMFY_PINS[@]}" "${COMFY_NODEPS[@]}"
    cat "$TREE/requirements.txt"
    pack_deps test
    declare -f build_comfy
) | hash_of)
VENV=$CACHE/venv-$name-$key
ensure_venv "$VENV" build_comfy
if ((RUN_PYTEST)); then
    PYTEST_ARGS=("${@:3}")
    run_pytest "$VENV/bin/python" "$TREE"
fi
echo "COMFYUI_PATH=$TREE"
echo "PYTHON=$VENV/bin/python"
