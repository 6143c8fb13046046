#!/usr/bin/env bash
# Kubernetes manifests (issue 5), offline:
#  1. k8s/base/prometheusrule.yaml is what lib/gen_prometheusrule.py makes of deploy/prometheus/alerts.yml
#  2. `kubectl kustomize` renders k8s/overlays/rabbitmq and k8s/overlays/nats
#  3. core kinds (Deployment, Service, ConfigMap, PodDisruptionBudget) pass
#     `kubernetes-validate --strict -k 1.33.0` (PyPI kubernetes-validate==1.37.0 in a venv)
#  4. KEDA ScaledObject/TriggerAuthentication and prometheus-operator PodMonitor/PrometheusRule
#     pass their CRD schemas (npm @kubernetes-models/keda@0.4.2, @kubernetes-models/prometheus-operator@6.0.0)
#  5. the rendered PrometheusRule's spec passes `promtool check rules`
#  6. fleet's invariants (lib/check_k8s.py): probes on the admin port, resources, grace period >
#     FLEET_DRAIN_DEADLINE, non-root + read-only root + /tmp emptyDir, database/broker URLs from
#     Secrets, every FLEET_* env var is a real option of the binary, Service+PDB+PodMonitor per
#     Deployment, one ScaledObject per worker (none for the coordinator) whose queue / stream /
#     consumer names follow fleet's naming for the prefix, cooldown vs grace, max_ack_pending.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=30-k8s
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

ensure_kubectl
ensure_venv
ensure_node_modules
ensure_promtool
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

say "1/6 PrometheusRule generated from deploy/prometheus/alerts.yml"
"$PY" scripts/ci-extra.d/lib/gen_prometheusrule.py . --check

for overlay in rabbitmq nats; do
    say "2/6 kubectl kustomize k8s/overlays/$overlay"
    timeout 120 kubectl kustomize "k8s/overlays/$overlay" >"$OUT/$overlay.yaml" ||
        die "kubectl kustomize k8s/overlays/$overlay failed"
    "$PY" - "$OUT/$overlay.yaml" "$OUT/$overlay.core.yaml" "$OUT/$overlay.rules.yaml" <<'PYEOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if "/" not in d["apiVersion"] or d["apiVersion"].split("/")[0] in ("apps", "policy", "batch", "autoscaling")]
yaml.safe_dump_all(core, open(sys.argv[2], "w"), sort_keys=False)
rules = [d["spec"] for d in docs if d["kind"] == "PrometheusRule"]
yaml.safe_dump(rules[0] if rules else {"groups": []}, open(sys.argv[3], "w"), sort_keys=False)
print(f"  rendered {len(docs)} objects: " + ", ".join(sorted({d['kind'] for d in docs})))
PYEOF

    say "3/6 kubernetes-validate --strict -k 1.33.0 (core kinds of $overlay)"
    "$TOOLS_DIR/venv/bin/kubernetes-validate" --strict --quiet -k 1.33.0 "$OUT/$overlay.core.yaml" ||
        die "kubernetes-validate rejects the $overlay overlay's core objects (above)"
    say "  core objects valid"

    say "4/6 KEDA + prometheus-operator schemas ($overlay)"
    node scripts/ci-extra.d/lib/validate_crds.mjs "$NODE_DIR" "$OUT/$overlay.yaml"

    say "5/6 promtool check rules on the PrometheusRule spec ($overlay)"
    "$PROMTOOL" check rules "$OUT/$overlay.rules.yaml"

    say "6/6 fleet invariants ($overlay)"
    "$PY" scripts/ci-extra.d/lib/check_k8s.py . "$overlay" "$OUT/$overlay.yaml"
done
say "OK"
