//! `pixlm check`: reference parity of every fixture case found under a directory.

use crate::common::ComputeArgs;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CheckArgs {
    /// A fixture set (with model/ and cases/), a folder of such sets, or one case directory.
    pub dir: PathBuf,
    /// Print every comparison, not only the failing ones.
    #[arg(long, short)]
    pub verbose: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

pub fn run(a: CheckArgs) -> Result<i32> {
    let opts = a.compute.load_options()?;
    let reports =
        pixlm_engine::check::run_all(&a.dir, &opts, &mut |name| eprintln!("checking {name} …"))?;
    let mut failed = 0;
    for r in &reports {
        let status = if r.passed() { "PASS" } else { "FAIL" };
        println!("{status} {}/{}", r.set, r.case);
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
        for l in &r.lines {
            if a.verbose
                || !l.pass
                || matches!(
                    l.name.as_str(),
                    "input_ids" | "pixel_values" | "logits_last" | "generated_ids"
                )
            {
                let mark = if l.pass { "ok  " } else { "FAIL" };
                let val = if l.tolerance == 0.0 {
                    format!("{}", l.value)
                } else {
                    format!("{:.2e} (tol {:.0e})", l.value, l.tolerance)
                };
                println!("    {mark} {:<22} {val} {}", l.name, l.note);
            }
        }
        if !r.passed() {
            failed += 1;
        }
    }
    println!("{} passed, {} failed", reports.len() - failed, failed);
    Ok(if failed == 0 { 0 } else { 1 })
}
