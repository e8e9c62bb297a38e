//! What skiff-control's log looks like to an operator who sends it to a file: plain
//! text (no terminal colour codes), and quiet at rest — the leader Lease is renewed
//! every 2 s, and routine writes like that belong at DEBUG, not INFO.

mod support;

use std::time::Duration;

use support::Server;

#[test]
fn log_file_is_plain_text_and_quiet_at_rest() {
    let s = Server::start();
    // Leadership won and every controller started: from here on nothing happens.
    s.wait_for(20, "the controllers to start", || s.log().contains("pod-garbage-collector"));
    std::thread::sleep(Duration::from_secs(2));
    let before = s.log().len();
    // Long enough for two Lease renewals.
    std::thread::sleep(Duration::from_secs(5));
    let log = s.log();
    assert!(!log.contains('\u{1b}'), "the log holds ANSI escape codes although it is a file:\n{log}");
    let at_rest = &log[before..];
    assert!(at_rest.trim().is_empty(), "skiff-control logged at INFO while nothing happened:\n{at_rest}");
}
