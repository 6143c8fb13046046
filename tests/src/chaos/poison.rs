//! The poison of scenario 5: a required command analyzer that every analyzer runs on each
//! item. On a malformed item it answers more than its output cap (the analyzer fails the
//! job permanently: `output_too_large`); on a crashing item it SIGKILLs the analyzer
//! process that runs it, as a parser bug taking down its whole process would.

use std::path::Path;

use super::feed::{CRASH_MARKER, MALFORMED_MARKER};

/// Writes the guard script and its `[[analyzer]]` file into `dir`; the analyzer flags.
pub fn analyzer_flags(dir: &Path) -> std::io::Result<Vec<String>> {
    let script = dir.join("chaos-poison.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# fleet-chaos poison check: reads the item on stdin.
d=$(cat)
case "$d" in
*{CRASH_MARKER}*)
    # Walk up to the analyzer (not its command guard, the same binary) and kill it.
    p=$PPID
    while [ "$p" -gt 1 ]; do
        if [ "$(cat /proc/$p/comm 2>/dev/null)" = "fleet-analyzer" ] &&
            ! tr '\0' ' ' </proc/$p/cmdline | grep -q __fleet-command-guard; then
            kill -9 "$p"
            exit 1
        fi
        p=$(awk '{{print $4}}' /proc/$p/stat)
    done
    exit 1
    ;;
*{MALFORMED_MARKER}*)
    # More than max_output_bytes: the analyzer refuses the item for good.
    head -c 4096 /dev/zero | tr '\0' x
    exit 0
    ;;
esac
echo '{{"ok": true}}'
"#
        ),
    )?;
    let config = dir.join("chaos-analyzers.toml");
    std::fs::write(
        &config,
        format!(
            "[[analyzer]]\nname = \"chaos_poison\"\nprogram = \"/bin/sh\"\nargs = [\"{}\"]\n\
             input = \"stdin\"\ntimeout = \"20s\"\nmax_output_bytes = 1024\nrequired = true\n",
            script.display()
        ),
    )?;
    Ok(vec![format!("--analyzers-config={}", config.display())])
}
