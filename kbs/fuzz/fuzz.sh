#!/usr/bin/env bash
# Runs the fuzz targets on the stored corpora, on a stable toolchain.
#
#   kbs/fuzz/fuzz.sh [--grow] SECONDS [TARGET...]
#
# Builds every target once (AddressSanitizer, optimized), then runs each
# (all of `cargo fuzz list` when none is named) for SECONDS, starting from
# kbs/fuzz/corpus/TARGET and the seeds in kbs/fuzz/seeds/TARGET. New inputs
# go to a temporary directory, so the checkout is left as it was; with
# --grow they are merged into the stored corpus, keeping only inputs that add
# coverage. A crash, leak, timeout or out-of-memory ends the script with a
# nonzero status and the reproducer under kbs/fuzz/artifacts/TARGET. The
# summary of each run (executions, coverage) is printed.
#
# Sanitizer flags are nightly-only; RUSTC_BOOTSTRAP=1 lets the stable
# compiler accept them, for this build only.
set -euo pipefail

grow=0
if [ "${1:-}" = "--grow" ]; then
    grow=1
    shift
fi
seconds=${1:?usage: fuzz.sh [--grow] SECONDS [TARGET...]}
shift
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O
bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    mkdir -p "$corpus" "fuzz/artifacts/$t" "$scratch/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    log=$scratch/$t.log
    if ! "$bin_dir/$t" "$scratch/$t" "$corpus" "${seeds[@]}" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        tail -60 "$log"
        echo "fuzz: $t FAILED (reproducer in kbs/fuzz/artifacts/$t)" >&2
        failed=1
        continue
    fi
    runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o 'cov: [0-9]*' || true)
    echo "fuzz: $t ok, ${seconds}s, ${runs:-?} runs, ${cov:-cov: ?}"
    if [ $grow -eq 1 ]; then
        # Keep what adds coverage: merge the stored corpus and the new
        # inputs into a fresh directory, then replace the stored corpus.
        mkdir -p "$scratch/$t.min"
        "$bin_dir/$t" -merge=1 "$scratch/$t.min" "$corpus" "$scratch/$t" >>"$log" 2>&1
        rm -rf "$corpus"
        mv "$scratch/$t.min" "$corpus"
        echo "fuzz: $t corpus now $(find "$corpus" -type f | wc -l) inputs"
    fi
done
exit $failed
