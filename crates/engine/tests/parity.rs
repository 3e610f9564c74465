//! Reference parity: every fixture case under `../shared/fixtures` (or `$PIXLM_FIXTURES`) runs
//! through `check::run_all` — the code path of `pixlm check` — and must pass at the tolerances
//! each case states.

use pixlm_engine::check;
use std::path::PathBuf;

#[test]
fn every_fixture_case_passes() {
    let root = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    if !root.is_dir() {
        eprintln!("no fixtures at {}; skipping", root.display());
        return;
    }
    let reports =
        check::run_all(&root, &Default::default(), &mut |_| {}).expect("fixtures are readable");
    assert!(
        !reports.is_empty(),
        "no cases found under {}",
        root.display()
    );
    let mut failures = Vec::new();
    for r in &reports {
        eprintln!(
            "{} {}/{}",
            if r.passed() { "PASS" } else { "FAIL" },
            r.set,
            r.case
        );
        if let Some(e) = &r.error {
            failures.push(format!("{}/{}: {e}", r.set, r.case));
        }
        for l in r.lines.iter().filter(|l| !l.pass) {
            failures.push(format!(
                "{}/{}: {} = {} (tolerance {}) {}",
                r.set, r.case, l.name, l.value, l.tolerance, l.note
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
