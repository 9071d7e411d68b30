#!/usr/bin/env bash
# One prepared GPU run: every open GPU question of the pack in one command, < 8 min on an H100.
#
#   bash bench/gpu_check.sh OUT_DIR COMFYUI_TARBALL [--rehearse]
#
# Run from the repository root on an NVIDIA machine. Steps, each time-bounded (one hanging step cannot eat the
# budget; GPU_CHECK_BUDGET seconds in all, default 470):
#   setup        install the wheels carried in .whl/ into a private folder (no registry needed), unpack ComfyUI
#   gpu report   `python -m wan_nvfp4 gpu --json` (environment, kernel self-check, ~30 s benchmark) + Markdown
#   cuda tests   `pytest tests/test_kernels_cuda.py`
#   comfy gpu    `pytest tests/test_comfy_gpu.py` GPU modes (Dynamic VRAM on/off, lowvram, LoRA) against the
#                ComfyUI unpacked from COMFYUI_TARBALL
#   bench linear `python -m wan_nvfp4.bench.linear --fp8 --crossover --markdown` (last; --quick if < 300 s left)
# Every log and table goes under OUT_DIR; a short summary (also OUT_DIR/summary.md) is printed last.
# Without a GPU every step still runs and says so ("no GPU"); --rehearse also runs the ComfyUI step's CPU
# mode, which proves the unpacked ComfyUI and the installed wheels start a server (CPU rehearsal).
# GPU_CHECK_SKIP="comfy,cuda" skips the steps whose names contain one of the words (e.g. in a second run).
#
# Preparation, on a machine with registry access, in the repository root (.whl/ is ignored by git; wheels for
# the GPU machine's Python 3.12, x86-64; the GPU image already has torch, Triton, numpy, safetensors, pytest,
# aiohttp, transformers, ...; ComfyUI's frontend and PyAV are stubbed below when missing: too large to carry):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     comfy-kitchen==0.2.24 comfy-aimdo==0.4.10 torchsde==0.2.6 trampoline==0.1.2 alembic==1.20.1 mako==1.4.3 \
#     sqlalchemy==2.1.9 simpleeval==1.0.8 blake3==1.0.11 pydantic==2.14.4 pydantic-core==2.50.5 \
#     pydantic-settings==2.16.3 python-dotenv==1.2.4 annotated-types==0.8.0 typing-inspection==0.4.5
#   cp ../shared/vendor/comfyui-0.29.0-4f874c5e.tar.gz .whl/
#
# (about 47 MB of wheels + 7 MB of ComfyUI: within the device tool's 64 MiB.) Then, on the GPU machine, with
# `.whl` carried:  bash bench/gpu_check.sh "$OUT/gpu_check" .whl/comfyui-0.29.0-4f874c5e.tar.gz
#
# CPU rehearsal (here): PYTHON=/work/cenv/venv-0.29.0/bin/python GPU_CHECK_STUBS=force \
#   bash bench/gpu_check.sh /tmp/gpu_check ../shared/vendor/comfyui-0.29.0-4f874c5e.tar.gz --rehearse

set -u
if [ $# -lt 2 ]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR COMFYUI_TARBALL [--rehearse]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
TARBALL=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
REHEARSE=0
[ "${3:-}" = "--rehearse" ] && REHEARSE=1
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}  # a rehearsal on another Python points this at wheels for it
BUDGET=${GPU_CHECK_BUDGET:-470}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wan_nvfp4_gpu_check.XXXXXX")
SUMMARY="$OUT/summary.md"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
cd "$REPO" || exit 2

elapsed() { echo $(($(date +%s) - START)); }

# run_step NAME CAP_SECONDS LOG COMMAND...: run with timeout min(CAP, what is left), record status and time.
run_step() {
    local name=$1 cap=$2 log=$3
    shift 3
    local left=$((BUDGET - $(elapsed) - 10))
    local limit=$((cap < left ? cap : left))
    local skip
    local skips=${GPU_CHECK_SKIP:-}
    for skip in ${skips//,/ }; do
        if [[ "$name" == *"$skip"* ]]; then
            printf '| %s | skipped (GPU_CHECK_SKIP) | 0 s | |\n' "$name" >>"$SUMMARY"
            return
        fi
    done
    if [ "$limit" -lt 15 ]; then
        printf '| %s | skipped: no time left | 0 s | |\n' "$name" >>"$SUMMARY"
        return
    fi
    echo "== $name (limit ${limit} s) -> $log"
    local t0 rc status
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
        timeout -k 15 "$limit" bash -c "$*" >"$log" 2>&1
    else
        timeout -k 15 "$limit" "$@" >"$log" 2>&1
    fi
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="TIMEOUT after ${limit} s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [ "$rc" = 0 ] && [ "$GPU" = 0 ] && status="ok: no GPU"
    local note
    note=$(grep -E '(passed|failed|skipped|deselected|error)( |,|$)' "$log" | tail -1)
    [ -z "$note" ] && note=$(tail -1 "$log")
    printf '| %s | %s | %s s | %s |\n' "$name" "$status" $(($(date +%s) - t0)) "${note//|//}" >>"$SUMMARY"
    tail -3 "$log"
}

# ---- setup ---------------------------------------------------------------------------------------------
setup() {
    local site="$WORK/site"
    mkdir -p "$site" "$WORK/pp" "$WORK/comfy"
    ln -s "$REPO" "$WORK/pp/wan_nvfp4"  # this checkout, importable as `wan_nvfp4`
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$WHEELS"/*.whl || return 1
        echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $site"
    else
        echo "no wheels in $WHEELS: using the packages already installed"
    fi
    # Stubs, only where the real package is missing (or GPU_CHECK_STUBS=force, to rehearse them): ComfyUI's
    # frontend (a headless server needs no UI) and PyAV (video I/O; imported by comfy_api, unused here).
    "$PY" - "$site" "${GPU_CHECK_STUBS:-}" <<'EOF' || return 1
import importlib.util, pathlib, sys
site, force = pathlib.Path(sys.argv[1]), sys.argv[2] == "force"
def missing(name):
    return force or importlib.util.find_spec(name) is None
STUB = '''"""Stub written by bench/gpu_check.sh: the real package is not installed here."""
class _Stub(type):
    def __getattr__(cls, name):
        return _Stub(name, (), {})
def __getattr__(name):
    return _Stub(name, (), {})
'''
if missing("comfyui_frontend_package"):
    pkg = site / "comfyui_frontend_package"
    (pkg / "static").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Stub written by bench/gpu_check.sh (headless)."""\n')
    (pkg / "static" / "index.html").write_text("<html><body>headless ComfyUI (gpu_check)</body></html>\n")
    print("stub: comfyui_frontend_package")
if missing("av"):
    for sub in ("", "container", "subtitles", "subtitles/stream", "video", "video/reformatter", "audio",
                "audio/resampler", "error", "filter"):
        folder = site / "av" / sub
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(STUB)
    print("stub: av (PyAV)")
EOF
    tar xzf "$TARBALL" -C "$WORK/comfy" || return 1
    local main
    main=$(find "$WORK/comfy" -maxdepth 2 -name main.py | head -1)
    [ -n "$main" ] || { echo "no main.py in $TARBALL"; return 1; }
    echo "ComfyUI: $(dirname "$main") ($(grep -h __version__ "$(dirname "$main")/comfyui_version.py" 2>/dev/null))"
    echo "COMFYUI=$(dirname "$main")" >"$WORK/comfy.env"
    "$PY" -c "import wan_nvfp4, comfy_kitchen, comfy_aimdo; print('pack:', wan_nvfp4.__file__)" \
        || echo "WARNING: an import failed (see above)"
    command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    return 0
}

render_report() {
    "$PY" -m wan_nvfp4 gpu --json >"$OUT/gpu_report.json" || return 1
    "$PY" -c "import json, sys; from wan_nvfp4.bench.gpu_report import to_markdown
print(to_markdown(json.load(open(sys.argv[1]))))" "$OUT/gpu_report.json" >"$OUT/gpu_report.md" || return 1
    "$PY" -c "import json, sys, collections; r = json.load(open(sys.argv[1]))
c = collections.Counter(row['status'] for row in r.get('selfcheck', []))
print('self-check:', ', '.join(f'{n} {s}' for s, n in sorted(c.items())) or r.get('no_gpu'))" "$OUT/gpu_report.json"
}
export -f setup render_report
export OUT TARBALL REPO PY WORK WHEELS
export PYTHONPATH="$WORK/pp:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
GPU=0
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() and torch.version.hip is None else 3)" \
    2>/dev/null && GPU=1
{
    echo "# gpu_check summary ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null))"
    echo
    if [ "$GPU" = 1 ]; then
        "$PY" -c "from wan_nvfp4.kernels import gpu_info; print(gpu_info.one_line(gpu_info.describe('cuda')))" \
            2>&1 | tail -1
    else
        echo "no GPU: torch sees no NVIDIA (CUDA) device; the GPU steps run and report that (rehearsal)"
    fi
    echo
    echo "| step | result | time | last line |"
    echo "|---|---|---|---|"
} >>"$SUMMARY"
SAVED_GPU=$GPU
GPU=1  # setup's status is ok/FAILED whatever the machine
run_step "setup" 120 "$OUT/setup.log" setup
GPU=$SAVED_GPU
[ -f "$WORK/comfy.env" ] && . "$WORK/comfy.env"
export COMFYUI_PATH=${COMFYUI:-}

run_step "gpu report" 150 "$OUT/gpu_report.log" render_report
run_step "cuda tests" 150 "$OUT/test_kernels_cuda.log" \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels_cuda.py
COMFY_K="not cpu"
COMFY_STEP="comfy gpu tests"
if [ "$REHEARSE" = 1 ] && [ "$GPU" = 0 ]; then  # rehearsal: the CPU mode proves ComfyUI starts
    COMFY_K="cpu and not interpreter"
    COMFY_STEP="comfy gpu tests (CPU mode, rehearsal)"
fi
if [ -n "$COMFYUI_PATH" ]; then
    run_step "$COMFY_STEP" 200 "$OUT/test_comfy_gpu.log" \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_comfy_gpu.py -k "$COMFY_K" --basetemp "$WORK/pytest"
else
    printf '| comfy gpu tests | FAILED: no ComfyUI unpacked | 0 s | |\n' >>"$SUMMARY"
fi
# The full table takes minutes; with less than 300 s left it runs --quick (3 shapes, 4 M values, the crossover
# scan on those shapes), and the summary says so.
BENCH=(--fp8 --crossover --markdown)
BENCH_NAME="bench linear"
if [ $((BUDGET - $(elapsed) - 10)) -lt 300 ]; then
    BENCH+=(--quick)
    BENCH_NAME="bench linear (--quick: time was short)"
fi
run_step "$BENCH_NAME" 300 "$OUT/bench_linear.md" "$PY" -m wan_nvfp4.bench.linear "${BENCH[@]}"

echo >>"$SUMMARY"
echo "total $(elapsed) s of a ${BUDGET} s budget; logs and tables in $OUT" >>"$SUMMARY"
rm -rf "$WORK"
echo
cat "$SUMMARY"
