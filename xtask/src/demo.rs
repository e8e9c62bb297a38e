//! `cargo xtask demo`: brings up a local cluster on a fresh machine and shows a request
//! crossing it. Not written yet.

use anyhow::{Result, bail};

pub fn run() -> Result<()> {
    println!("cargo xtask demo: not yet implemented");
    bail!("`cargo xtask demo` is not yet implemented")
}
