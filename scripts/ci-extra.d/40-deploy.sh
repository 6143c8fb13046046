#!/usr/bin/env bash
# Container image and compose file (issue 5), validated without a container engine:
#  1. `docker compose config -q` when this machine's docker client has the compose plugin;
#     otherwise the YAML is parsed with PyYAML (merge keys, anchors) and that is said plainly
#  2. lib/check_compose.py: every FLEET_* variable in compose.yaml is a real option of the binary
#     the service runs, admin/API ports equal the binaries' defaults (9090/8080) and are what
#     Prometheus scrapes / compose publishes, broker and database URLs point at compose services,
#     depends_on uses service_healthy on services with healthchecks, workers start after the
#     coordinator, stop_grace_period > FLEET_DRAIN_DEADLINE, Prometheus mounts alerts.yml where
#     prometheus.yml loads it, and the Dockerfile is multi-stage rust:1.95-bookworm ->
#     debian:bookworm-slim, cargo build --release --locked of every binary, ca-certificates,
#     non-root USER, HEALTHCHECK, COPY sources exist
#  3. the image's HEALTHCHECK command works: it is run with bash against a real fleet-writer
#  4. hadolint on deploy/Dockerfile if installed (skipped with a note otherwise)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=40-deploy
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh
ensure_venv

say "1/4 compose file syntax"
if command -v docker >/dev/null 2>&1 && timeout 20 docker compose version >/dev/null 2>&1; then
    timeout 60 docker compose -f deploy/compose.yaml config -q
    say "  docker compose config: OK"
else
    say "  the docker client here has no compose plugin: validating deploy/compose.yaml with PyYAML instead"
    "$PY" -c 'import sys, yaml; d = yaml.safe_load(open("deploy/compose.yaml")); assert isinstance(d.get("services"), dict), "no services"; print("  YAML OK:", ", ".join(d["services"]))'
fi

say "2/4 compose / Prometheus config / Dockerfile vs the binaries"
"$PY" scripts/ci-extra.d/lib/check_compose.py .

say "3/4 the image HEALTHCHECK command against a live fleet-writer"
bin=target/debug/fleet-writer
if [[ ! -x $bin ]]; then
    timeout 1800 cargo build --locked -q -p fleet-writer --bin fleet-writer || die "cargo build -p fleet-writer failed"
fi
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
env -u FLEET_DATABASE_URL FLEET_BROKER_URL=memory:// FLEET_ADMIN_ADDR="127.0.0.1:$port" FLEET_SQLITE_PATH="$tmp/w.sqlite" "$bin" >"$tmp/log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; sleep 0.3; kill -KILL $pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
# The exec-form HEALTHCHECK array from the Dockerfile, run as docker would run it.
mapfile -t hc < <("$PY" - <<'PYEOF'
import json, re
text = open("deploy/Dockerfile").read().replace("\\\n", " ")
m = re.search(r"^HEALTHCHECK\s.*?CMD\s+(\[.*\])\s*$", text, re.M)
for a in json.loads(m.group(1)):
    print(a)
PYEOF
)
ok=0
for _ in $(seq 1 50); do
    if FLEET_ADMIN_ADDR="127.0.0.1:$port" timeout 5 "${hc[@]}"; then ok=1; break; fi
    kill -0 $pid 2>/dev/null || { tail -20 "$tmp/log" >&2; die "fleet-writer exited during start-up"; }
    sleep 0.3
done
((ok)) || die "the Dockerfile HEALTHCHECK command never succeeded against a healthy fleet-writer"
say "  HEALTHCHECK command passes on a healthy service"
kill -TERM $pid
wait $pid || die "fleet-writer did not exit 0 on SIGTERM"
if FLEET_ADMIN_ADDR="127.0.0.1:$port" timeout 5 "${hc[@]}" 2>/dev/null; then
    die "the HEALTHCHECK command succeeds with nothing listening: it checks nothing"
fi
say "  HEALTHCHECK command fails when the service is gone"

say "4/4 hadolint"
if command -v hadolint >/dev/null 2>&1; then
    hadolint deploy/Dockerfile
else
    say "  hadolint not installed: skipped"
fi
say "OK"
