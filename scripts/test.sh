#!/usr/bin/env bash
# THE test command for fleet (CI runs it through .ci/run):
#   services -> fmt -> clippy -> build -> tests (+ doctests) -> scripts/ci-extra.d/*.sh
# Prints each step's wall time and the total at the end, also when a step fails.
#
# Environment:
#   FLEET_TEST_THREADS     test parallelism (default 4: the broker tests share one
#                          RabbitMQ/NATS/PostgreSQL on a 2-core machine)
#   FLEET_SKIP_SERVICES=1  do not run scripts/services.sh (services managed elsewhere)
#   FLEET_TEST_*_URL       where the tests find the services (see fleet-test-support)
#
# Later work adds checks by dropping an executable `NN-name.sh` into
# scripts/ci-extra.d/; they run in name order from the repository root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TEST_THREADS="${FLEET_TEST_THREADS:-4}"

now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
fmt_us() { printf '%d.%01ds' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

RUN_START=$(now_us)
STEP_NAMES=()
STEP_TIMES=()
CURRENT_STEP=""

summary() {
    local rc=$?
    local i
    echo
    echo "==> step timings"
    for i in "${!STEP_NAMES[@]}"; do
        printf '  %-32s %10s\n' "${STEP_NAMES[$i]}" "${STEP_TIMES[$i]}"
    done
    if [[ -n "$CURRENT_STEP" ]]; then
        printf '  %-32s %10s  <- FAILED (exit %d)\n' "$CURRENT_STEP" \
            "$(fmt_us $(($(now_us) - STEP_START)))" "$rc"
    fi
    printf '  %-32s %10s\n' "total" "$(fmt_us $(($(now_us) - RUN_START)))"
    if ((rc == 0)); then
        echo "==> all steps passed"
    else
        echo "==> FAILED at step: ${CURRENT_STEP:-?}"
    fi
}
trap summary EXIT

# step NAME COMMAND...: run COMMAND, timing it; a failure ends the script.
step() {
    CURRENT_STEP=$1
    shift
    echo
    echo "==> [$CURRENT_STEP] $*"
    STEP_START=$(now_us)
    "$@"
    STEP_NAMES+=("$CURRENT_STEP")
    STEP_TIMES+=("$(fmt_us $(($(now_us) - STEP_START)))")
    CURRENT_STEP=""
}

if [[ "${FLEET_SKIP_SERVICES:-0}" != 1 ]]; then
    step services bash scripts/services.sh
fi

# Test hygiene (DESIGN §8): remove what killed earlier runs left on the brokers.
if [[ "${FLEET_SKIP_SERVICES:-0}" != 1 ]]; then
    step sweep bash scripts/sweep-test-leftovers.sh
fi

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step build cargo build --workspace --all-targets --locked

if cargo nextest --version >/dev/null 2>&1; then
    step tests cargo nextest run --workspace --locked --no-fail-fast \
        --test-threads "$TEST_THREADS"
    # nextest does not run doctests.
    step doctests cargo test --workspace --doc --locked
else
    echo "cargo-nextest not found: running the suite with cargo test"
    step tests cargo test --workspace --locked --no-fail-fast -- --test-threads "$TEST_THREADS"
fi

if [[ -d scripts/ci-extra.d ]]; then
    shopt -s nullglob
    for hook in scripts/ci-extra.d/*.sh; do
        if [[ -x "$hook" ]]; then
            step "extra: $(basename "$hook")" "$hook"
        else
            echo "==> skipping $hook: not executable (chmod +x it to run it)"
        fi
    done
    shopt -u nullglob
fi
