#!/usr/bin/env bash
# GPU check (issue 17): on a CUDA machine, in at most 10 minutes,
#   1. the `cuda` tests: python -m pytest -m cuda (tests/test_cuda.py: every architecture on one GPU with and
#      without AMP, DataParallel and DDP/nccl on 2 GPUs, test.py --device cuda, resume GPU -> CPU -> GPU,
#      float64 SVAE inference against the CPU);
#   2. benchmarks/bench.py --device cuda, few steps and rounds each:
#      VAE vs GraphVAE vs GraphLSTMVAE (shipped architectures) at batch 128 and 1024; vrnn_dots vs
#      recurrent_graph_vae_dots; SVAE-LDS at batch 1 and 64; SVAE-GMM at its shipped batch (50); and GraphVAE
#      (shipped) at batch 128 eager vs trainer.compile=true (bench.py --compile);
# then prints one summary: pytest's counts, every benchmark's table or its failure, the total wall time.
#
#   bash benchmarks/gpu_check.sh [OUT]    # OUT: logs and --json files (default saved/gpu_check/<date-time>)
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Every part runs under `timeout` and the whole under a 600 s deadline: a part that would start with under
# 20 s left is skipped and reported. Exit status: 0 all passed, 1 something failed, timed out or was skipped,
# 2 no CUDA (one line, nothing run, nothing written).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python)}
BUDGET=600   # seconds for everything, the summary included
RESERVE=10   # kept for the summary
START=$SECONDS

device=$("$PYTHON" - <<'EOF' 2>/dev/null
import torch
if torch.cuda.is_available():
    print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
EOF
)
status=$?
if [ $status -ne 0 ]; then
    echo "gpu_check: cannot import torch with '$PYTHON' (set PYTHON=...): nothing run" >&2
    exit 2
fi
if [ -z "$device" ]; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing run" >&2
    exit 2
fi

OUT=${1:-saved/gpu_check/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || { echo "gpu_check: cannot make the output folder $OUT" >&2; exit 2; }
export PYTHONUNBUFFERED=1

failures=0
summary=()   # lines of the final summary, in order

# run_part NAME CAP CMD...: run CMD with its output in $OUT/NAME.log, for at most CAP seconds (less when the
# deadline is nearer); sets part_rc (124: timed out, 125: skipped for lack of time) and part_seconds.
run_part() {
    local name=$1 cap=$2
    shift 2
    local left=$((START + BUDGET - RESERVE - SECONDS))
    part_seconds=0
    if [ "$left" -lt 20 ]; then
        part_rc=125
        failures=$((failures + 1))
        echo "[gpu_check] $name: skipped, ${left}s left" | tee -a "$OUT/gpu_check.log"
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    echo "[gpu_check] $name (at most ${cap}s): $*" | tee -a "$OUT/gpu_check.log"
    local t0=$SECONDS
    timeout --kill-after=10 "$cap" "$@" >"$OUT/$name.log" 2>&1
    part_rc=$?
    part_seconds=$((SECONDS - t0))
    [ "$part_rc" -ne 0 ] && failures=$((failures + 1))
    echo "[gpu_check] $name: exit $part_rc after ${part_seconds}s" | tee -a "$OUT/gpu_check.log"
}

# outcome: a few words for part_rc
outcome() {
    case $part_rc in
        0) echo "ok" ;;
        124 | 137) echo "TIMED OUT" ;;
        125) echo "SKIPPED (out of time)" ;;
        *) echo "FAILED (exit $part_rc)" ;;
    esac
}

# where NAME: " (seconds; log file)" of the part just run, nothing for a skipped one
where() {
    [ "$part_rc" -ne 125 ] && echo " (${part_seconds}s; log $OUT/$1.log)"
}

# ---------------------------------------------------------------- 1. the cuda tests
run_part pytest 330 "$PYTHON" -m pytest -m cuda -q -rfEs -p no:cacheprovider --durations=10 \
    --junitxml="$OUT/pytest.xml"
counts=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)' "$OUT/pytest.log" 2>/dev/null | tail -n 1 \
         | sed -E 's/^=+ //; s/ =+$//')   # pytest's last line: "52 passed, 2 skipped in 201.3s"
summary+=("pytest -m cuda: $(outcome), ${counts:-no counts}$(where pytest)")
while IFS= read -r line; do
    summary+=("    $line")
done < <(grep -E '^(FAILED|ERROR) ' "$OUT/pytest.log" 2>/dev/null | head -n 30)

# ---------------------------------------------------------------- 2. the benchmarks
BENCH=("$PYTHON" benchmarks/bench.py --device cuda --repeats 3)

# bench NAME CAP TITLE ARGS...: one bench.py run, its table (or its failure) in the summary
bench() {
    local name=$1 cap=$2 title=$3
    shift 3
    rm -f "$OUT/$name.json"   # a reused OUT: no stale result
    run_part "$name" "$cap" "${BENCH[@]}" --json "$OUT/$name.json" "$@"
    summary+=("" "bench $name: $title: $(outcome)$(where "$name")")
    local lines
    case $part_rc in
        0) lines=$(awk '/^device /{p=1} p{print} /^ratio:/{p=0}' "$OUT/$name.log") ;;
        125) return ;;
        *) lines=$(grep -v '^[[:space:]]*$' "$OUT/$name.log" | tail -n 6) ;;
    esac
    [ -z "$lines" ] && lines="(no output)"
    while IFS= read -r line; do
        summary+=("    $line")
    done <<<"$lines"
}

bench graph_shipped 100 "VAE vs GraphVAE vs GraphLSTMVAE (shipped architectures), batch 128 and 1024" \
    -c configs/bench/vae_shipped_trunk.json -c configs/bench/graph_vae_shipped.json \
    -c configs/bench/graph_lstm_vae_shipped.json --bs 128 1024 --steps 20 --warmup 5
bench recurrent 60 "vrnn_dots vs recurrent_graph_vae_dots, batch 64, T = 32" \
    -c configs/bench/vrnn_dots.json -c configs/bench/recurrent_graph_vae_dots.json --steps 10 --warmup 3
bench svae_lds 60 "SVAE-LDS, batch 1 and 64 (50-frame chunks)" \
    -c configs/svae_lds.yaml --bs 1 64 --steps 10 --warmup 3
bench svae_gmm 50 "SVAE-GMM at its shipped batch size (50)" \
    -c configs/svae_gmm.yaml --steps 20 --warmup 5
bench compile_pair 150 "GraphVAE (shipped), batch 128, eager and compiled (--compile: trainer.compile=true)" \
    -c configs/bench/graph_vae_shipped.json --bs 128 --steps 20 --warmup 5 --compile
speedup=$("$PYTHON" - "$OUT/compile_pair.json" <<'EOF' 2>/dev/null
import json, sys
eager, compiled = json.load(open(sys.argv[1]))
print(f"compiled / eager steps/s = {compiled['steps_per_s']:.2f} / {eager['steps_per_s']:.2f} = "
      f"{compiled['steps_per_s'] / eager['steps_per_s']:.2f}x; compile time about "
      f"{compiled['warmup_s'] - eager['warmup_s']:.0f} s")
EOF
)
[ -n "$speedup" ] && summary+=("" "compile pair (GraphVAE shipped, batch 128): $speedup")

# ---------------------------------------------------------------- summary
{
    echo
    echo "==================== GPU check summary ===================="
    echo "device: $device"
    printf '%s\n' "${summary[@]}"
    echo
    echo "total wall time: $((SECONDS - START))s (budget ${BUDGET}s); parts failed, timed out or skipped: $failures"
    echo "outputs: $OUT"
} | tee "$OUT/summary.txt"
[ "$failures" -eq 0 ]
