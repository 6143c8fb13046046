#!/usr/bin/env bash
# Audited dependencies (issue 13): `cargo deny check` (advisories, licences, bans, sources) with
# the policy in deny.toml, fully offline.
#  1. cargo-deny: used from PATH / ~/.cargo/bin when present, else `cargo install --locked
#     cargo-deny` (a few minutes on 2 cores; only on a machine without it)
#  2. the advisory database is the snapshot in ../shared/advisory-db (beside the clone; see its
#     SNAPSHOT.md), or FLEET_ADVISORY_DB. cargo-deny wants a git checkout named after the
#     database URL, so the snapshot is copied into target/deny/advisory-dbs/advisory-db-<hash>
#     (deny.toml's db-path) and committed there; nothing is fetched (--offline)
#  3. `cargo deny --offline --locked check`: any advisory, disallowed licence, banned crate
#     (aws-lc, OpenSSL) or foreign source fails; duplicate versions only warn
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export SCRIPT_NAME=60-deny
# shellcheck source=scripts/ci-extra.d/lib/tools.sh
source scripts/ci-extra.d/lib/tools.sh

SNAPSHOT="${FLEET_ADVISORY_DB:-../shared/advisory-db}"
DBS=target/deny/advisory-dbs
# cargo-deny's directory name for the default database URL (https://github.com/RustSec/advisory-db).
DB_NAME=advisory-db-3157b0e258782691

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo deny --version >/dev/null 2>&1; then
    say "cargo-deny not found: cargo install --locked cargo-deny (takes a few minutes)"
    timeout "${FLEET_DENY_INSTALL_TIMEOUT:-1200}" cargo install --locked cargo-deny \
        || die "installing cargo-deny failed (needs crates.io); install it by hand: cargo install --locked cargo-deny"
fi
say "$(cargo deny --version)"

[[ -d "$SNAPSHOT/crates" ]] \
    || die "no advisory database at $SNAPSHOT (expected the snapshot beside the repository, ../shared/advisory-db); set FLEET_ADVISORY_DB to its path"
grep -m1 -o 'upstream commit [0-9a-f]*' "$SNAPSHOT/SNAPSHOT.md" 2>/dev/null | sed "s/^/$SCRIPT_NAME: advisory snapshot: /" || true

make_db() { # $1: directory name cargo-deny looks for
    rm -rf "$DBS" && mkdir -p "$DBS/$1"
    cp -r "$SNAPSHOT/." "$DBS/$1/"
    rm -rf "$DBS/$1/.git"
    git -C "$DBS/$1" init -q
    git -C "$DBS/$1" add -A
    git -C "$DBS/$1" -c user.name=fleet-ci -c user.email=ci@fleet.invalid \
        commit -q -m "advisory-db snapshot from $SNAPSHOT"
}

run_deny() {
    cargo deny --offline --locked check --hide-inclusion-graph 2>&1 | tee target/deny/report.txt
    return "${PIPESTATUS[0]}"
}

make_db "$DB_NAME"
mkdir -p target/deny
if ! run_deny; then
    # Another cargo-deny version may hash the URL differently: use the name it asked for, once.
    asked=$(grep -o "cannot change to '[^']*advisory-db-[0-9a-f]*'" target/deny/report.txt \
        | grep -o 'advisory-db-[0-9a-f]*' | head -1 || true)
    if [[ -n "$asked" && "$asked" != "$DB_NAME" ]]; then
        say "cargo-deny expects the database as $asked; retrying"
        make_db "$asked"
        run_deny || die "cargo deny check failed (report above; policy and exceptions in deny.toml)"
    else
        die "cargo deny check failed (report above; policy and exceptions in deny.toml)"
    fi
fi
say "ok: advisories, licences, bans and sources pass (duplicates are warnings)"
