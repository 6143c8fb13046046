# shellcheck shell=bash
# Shared helpers for scripts/ci-extra.d/*.sh (sourced, not run: the runner only
# picks up top-level *.sh files). Every tool lands under target/tools/ so a fresh
# clone needs no root and nothing is left outside the work tree:
#   promtool                 Debian `prometheus` (on PATH, or `apt-get download` + `dpkg -x`)
#   target/tools/venv        Python venv with kubernetes-validate==1.37.0 (+ PyYAML, its dependency)
#   target/tools/node        npm @kubernetes-models/keda@0.4.2, @kubernetes-models/prometheus-operator@6.0.0, js-yaml
# Every network step is bounded by FLEET_TOOLS_TIMEOUT seconds (default 300).

# No __pycache__ next to the checked-in helpers.
export PYTHONDONTWRITEBYTECODE=1
TOOLS_DIR="${FLEET_TOOLS_DIR:-$PWD/target/tools}"
TOOLS_TIMEOUT="${FLEET_TOOLS_TIMEOUT:-300}"
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMTOOL_MIN_MAJOR=2

say() { printf '%s: %s\n' "${SCRIPT_NAME:-ci-extra}" "$*"; }
die() {
    printf '%s: ERROR: %s\n' "${SCRIPT_NAME:-ci-extra}" "$*" >&2
    exit 1
}

# ensure_promtool: sets PROMTOOL to a working promtool binary.
ensure_promtool() {
    if [[ -n "${PROMTOOL:-}" && -x "$PROMTOOL" ]]; then
        return
    fi
    if command -v promtool >/dev/null 2>&1; then
        PROMTOOL=$(command -v promtool)
    elif [[ -x "$TOOLS_DIR/prometheus/usr/bin/promtool" ]]; then
        PROMTOOL="$TOOLS_DIR/prometheus/usr/bin/promtool"
    else
        say "promtool not found: extracting Debian's prometheus package into $TOOLS_DIR/prometheus"
        if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
            die "promtool is missing and this is not a Debian machine (no apt-get/dpkg): install Prometheus' promtool (>= 2.42) on PATH, or set PROMTOOL=/path/to/promtool"
        fi
        local dl="$TOOLS_DIR/prometheus-deb"
        rm -rf "$dl" && mkdir -p "$dl"
        if ! (cd "$dl" && timeout "$TOOLS_TIMEOUT" apt-get download prometheus >apt.log 2>&1); then
            # A fresh machine may have no package index yet: refresh it once when we can.
            local sudo=()
            [[ $EUID -eq 0 ]] || sudo=(sudo -n)
            say "apt-get download failed; refreshing the package index (apt-get update) and retrying"
            timeout "$TOOLS_TIMEOUT" "${sudo[@]}" apt-get update -qq >>"$dl/apt.log" 2>&1 || true
        fi
        if [[ ! -f $(compgen -G "$dl/prometheus_*.deb" || echo /nonexistent) ]] &&
            ! (cd "$dl" && timeout "$TOOLS_TIMEOUT" apt-get download prometheus >>apt.log 2>&1); then
            cat "$dl/apt.log" >&2 || true
            die "could not download Debian's prometheus package within ${TOOLS_TIMEOUT}s (above: apt-get's output). Run 'apt-get update' (as root) if the package index is missing, check the network, or install it: apt-get install -y --no-install-recommends prometheus"
        fi
        dpkg -x "$dl"/prometheus_*.deb "$TOOLS_DIR/prometheus" ||
            die "dpkg -x of $(ls "$dl"/prometheus_*.deb) failed"
        rm -rf "$dl"
        PROMTOOL="$TOOLS_DIR/prometheus/usr/bin/promtool"
    fi
    "$PROMTOOL" --version >/dev/null 2>&1 || die "$PROMTOOL does not run"
    local v
    v=$("$PROMTOOL" --version 2>&1 | sed -n 's/^promtool, version \([0-9][0-9.]*\).*/\1/p' | head -n1)
    [[ "${v%%.*}" -ge $PROMTOOL_MIN_MAJOR ]] 2>/dev/null || die "promtool $v is too old (need >= 2.42)"
    say "promtool $v at $PROMTOOL"
}

# ensure_venv: sets PY to a Python 3 with PyYAML and kubernetes-validate.
ensure_venv() {
    local venv="$TOOLS_DIR/venv"
    PY="$venv/bin/python"
    if [[ -x "$PY" ]] && "$PY" -c 'import yaml, kubernetes_validate' 2>/dev/null &&
        [[ "$("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')" == "$KUBERNETES_VALIDATE_VERSION" ]]; then
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is missing (apt-get install -y python3 python3-venv)"
    say "creating $venv with kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    rm -rf "$venv"
    python3 -m venv "$venv" ||
        die "python3 -m venv failed: on Debian install python3-venv (apt-get install -y python3-venv)"
    if ! timeout "$TOOLS_TIMEOUT" "$venv/bin/pip" install --quiet --disable-pip-version-check \
        --timeout 30 "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" PyYAML; then
        rm -rf "$venv"
        die "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION failed or took over ${TOOLS_TIMEOUT}s: check access to PyPI (or a pip mirror via PIP_INDEX_URL)"
    fi
}

# ensure_node_modules: installs the KEDA / prometheus-operator schema models; sets NODE_DIR.
ensure_node_modules() {
    NODE_DIR="$TOOLS_DIR/node"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        die "node and npm are missing: install Node.js 20 (apt-get install -y nodejs npm, or https://nodejs.org)"
    fi
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    ((major >= 18)) || die "Node.js $(node --version) is too old: need 18 or 20"
    if [[ -f "$NODE_DIR/node_modules/.fleet-ok" ]]; then
        return
    fi
    say "installing npm schema models into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    cat >"$NODE_DIR/package.json" <<'JSON'
{
  "name": "fleet-ci-tools",
  "private": true,
  "dependencies": {
    "@kubernetes-models/keda": "0.4.2",
    "@kubernetes-models/prometheus-operator": "6.0.0",
    "js-yaml": "4.1.0"
  }
}
JSON
    if ! (cd "$NODE_DIR" && timeout "$TOOLS_TIMEOUT" npm install --no-audit --no-fund \
        --loglevel=error --fetch-timeout=60000 >npm.log 2>&1); then
        cat "$NODE_DIR/npm.log" >&2 || true
        die "npm install of the schema models failed or took over ${TOOLS_TIMEOUT}s (output above): check access to the npm registry"
    fi
    touch "$NODE_DIR/node_modules/.fleet-ok"
}

# ensure_kubectl: kubectl with kustomize (kubectl kustomize) must be on PATH.
ensure_kubectl() {
    if ! command -v kubectl >/dev/null 2>&1; then
        die "kubectl is missing: it renders the kustomize overlays (kubectl kustomize, offline). Install it from https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ (e.g. curl -LO https://dl.k8s.io/release/v1.33.0/bin/linux/amd64/kubectl && install -m 0755 kubectl /usr/local/bin/), or the Kubernetes apt repository at https://pkgs.k8s.io/core:/stable:/v1.33/deb/"
    fi
}
