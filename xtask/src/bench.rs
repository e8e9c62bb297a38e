//! `cargo xtask bench <area>`: benchmarks of the datapath and control plane. Not written yet.

use anyhow::{Result, bail};

pub fn run(area: &str, args: &[String]) -> Result<()> {
    println!(
        "cargo xtask bench {area} {}: not yet implemented",
        args.join(" ")
    );
    bail!("`cargo xtask bench {area}` is not yet implemented")
}
