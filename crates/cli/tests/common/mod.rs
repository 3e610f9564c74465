//! Helpers shared by the CLI's end-to-end tests: the real binary, the reference fixtures and
//! scratch directories. (Each test binary uses some of them.)
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the real `pixlm` binary with `args` (logging limited to errors).
pub fn pixlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pixlm"))
        .args(args)
        .env("PIXLM_LOG", "error")
        .output()
        .expect("the pixlm binary runs")
}

/// The reference fixtures (`$PIXLM_FIXTURES` or `../shared/fixtures`), or `None` (and a note)
/// when they are not there.
pub fn fixtures() -> Option<PathBuf> {
    let p = std::env::var_os("PIXLM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    if p.join("neo-tiny/model/config.json").is_file() {
        Some(p)
    } else {
        eprintln!("fixtures not found at {}; skipping", p.display());
        None
    }
}

/// A fresh, empty scratch directory named after the test binary and `name`; it is removed when
/// the returned guard drops.
pub fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pixlm-{}-{name}-", env!("CARGO_CRATE_NAME")))
        .tempdir()
        .expect("a scratch directory")
}
