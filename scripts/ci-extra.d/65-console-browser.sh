#!/usr/bin/env bash
# Web console in a real browser (issue 14): installs Debian's Chromium and chromedriver when
# absent, starts chromedriver on 127.0.0.1:${FLEET_TEST_WEBDRIVER_PORT:-33444}, and runs the
# ignored test services/coordinator/tests/console_browser.rs (log in, live progress to
# `completed`, a failed item's reason, replay a dead letter, read-only refusals). Screenshots
# land in target/ui-screenshots/. chromedriver is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=65-console-browser
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

CHROMIUM="${FLEET_TEST_CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${FLEET_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}"
PORT="${FLEET_TEST_WEBDRIVER_PORT:-33444}"

if [[ ! -x "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
    command -v apt-get >/dev/null || die "Chromium and chromedriver are missing and this is not a Debian machine: install them and set FLEET_TEST_CHROMIUM / FLEET_TEST_CHROMEDRIVER"
    say "installing Debian's chromium and chromium-driver"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
say "$("$CHROMIUM" --version 2>/dev/null || echo chromium) / $("$CHROMEDRIVER" --version | head -1)"

log=$(mktemp)
"$CHROMEDRIVER" --port="$PORT" --allowed-ips=127.0.0.1 >"$log" 2>&1 &
driver=$!
trap 'kill "$driver" 2>/dev/null || true; wait "$driver" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 50); do
    if curl -fsS "http://127.0.0.1:$PORT/status" >/dev/null 2>&1; then break; fi
    kill -0 "$driver" 2>/dev/null || { cat "$log"; die "chromedriver exited at start (log above)"; }
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/status" >/dev/null || { cat "$log"; die "chromedriver did not answer on port $PORT within 10s"; }

export FLEET_TEST_WEBDRIVER_URL="http://127.0.0.1:$PORT" FLEET_TEST_CHROMIUM="$CHROMIUM"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --run-ignored only -E 'binary(console_browser)'
else
    cargo test --workspace --locked --test console_browser -- --ignored
fi
say "screenshots: $(ls target/ui-screenshots/*.png | wc -l) PNGs in target/ui-screenshots/"
# The render benchmark (10,000 items by hand, see docs/console.md) runs small here, so the code
# it measures stays checked and its figures are printed.
if cargo nextest --version >/dev/null 2>&1; then
    FLEET_CONSOLE_BENCH_ITEMS=1000 cargo nextest run --workspace --locked --run-ignored only \
        --no-capture -E 'test(console_page_render_benchmark)'
else
    FLEET_CONSOLE_BENCH_ITEMS=1000 cargo test --workspace --locked --test console -- --ignored \
        --nocapture console_page_render_benchmark
fi
