//! `skiff-pause`: the pod sandbox ("pause") process. It holds the pod's namespaces open
//! by doing nothing: it sleeps until SIGTERM or SIGINT and then exits 0.
//!
//! It is linked statically (see `skiff_tests::image::build_static_binaries`) so that it
//! is the whole content of the pause image. It does not reap zombies: that matters only
//! when a pod shares its PID namespace, which Skiff's pods do not.

use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

fn main() {
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skiff-pause: cannot install signal handlers: {e}");
            std::process::exit(1);
        }
    };
    // `forever` blocks until a signal arrives; any of ours means a clean stop.
    if let Some(sig) = signals.forever().next() {
        eprintln!("skiff-pause: signal {sig}, exiting");
    }
}
