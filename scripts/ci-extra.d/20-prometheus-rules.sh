#!/usr/bin/env bash
# Prometheus alert rules (issue 5):
#  1. promtool check rules deploy/prometheus/alerts.yml (syntax, PromQL, templates)
#  2. promtool test rules deploy/prometheus/alerts.test.yml (every alert fires and stays quiet
#     on synthetic series, with its exact labels and rendered annotations)
#  3. our invariants (lib/check_rules.py): for/severity/summary/description/runbook_url on every
#     alert, runbook anchors exist in docs/operations.md, expressions use documented metrics,
#     every alert has a firing and a non-firing test, the alerts the issue lists exist
#  4. the fault campaign's alert tests (issue 10): deploy/prometheus/campaign/*.test.yml are what
#     lib/campaign_alerts.py makes of the checked-in recordings and expectations.toml (stale ->
#     fail), and `promtool test rules` passes on each: every scenario's alert fires within ~2
#     minutes of its fault, resolves after it, and nothing fires in the healthy phase
#  5. promtool check config deploy/prometheus/prometheus.yml (the compose Prometheus config)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=20-prometheus-rules
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

ensure_promtool
ensure_venv
say "promtool check rules deploy/prometheus/alerts.yml"
"$PROMTOOL" check rules deploy/prometheus/alerts.yml
say "promtool test rules deploy/prometheus/alerts.test.yml"
"$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
say "rule invariants"
"$PY" scripts/ci-extra.d/lib/check_rules.py .
say "campaign alert tests (deploy/prometheus/campaign)"
"$PY" scripts/ci-extra.d/lib/campaign_alerts.py --promtool "$PROMTOOL" generate --check
shopt -s nullglob
campaign=(deploy/prometheus/campaign/*.test.yml)
shopt -u nullglob
((${#campaign[@]} > 0)) || die "no campaign alert tests in deploy/prometheus/campaign"
"$PROMTOOL" test rules "${campaign[@]}"
if [[ -f deploy/prometheus/prometheus.yml ]]; then
    say "promtool check config deploy/prometheus/prometheus.yml"
    # The config names the rule file by its path inside the Prometheus container.
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed "s#/etc/prometheus/fleet/alerts.yml#$PWD/deploy/prometheus/alerts.yml#" deploy/prometheus/prometheus.yml >"$tmp/prometheus.yml"
    "$PROMTOOL" check config "$tmp/prometheus.yml"
fi
say "OK"
