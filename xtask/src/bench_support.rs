//! What every bench shares, so that their figures are taken and printed the same way:
//! compared modes run in alternating order after a warm-up, several rounds, and each
//! figure printed as the median with its spread; a header saying what the figures were
//! taken on.
//!
//! Figure lines are `ID label: value unit (min .., max .., n=..)` with the median first
//! (the bars parse the first number). The environment lines start with `#` so that
//! nothing reads them as figures.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};
use skiff_tests::netns::Netns;

use crate::util::progress;

/// A cgroup v2 directory of the bench's own (`name` under the unified hierarchy),
/// made at once and removed when dropped, by which time its processes must have exited.
/// A socket-mode agent attaches the socket-level load balancer to it; clients run in
/// it as a pod's processes run in the node's cgroup subtree.
pub(crate) struct BenchCgroup(pub PathBuf);

impl BenchCgroup {
    pub(crate) fn new(name: &str) -> Self {
        let hybrid = Path::new("/sys/fs/cgroup/unified");
        let v2 = if hybrid.is_dir() { hybrid } else { Path::new("/sys/fs/cgroup") };
        let dir = v2.join(name);
        let _ = std::fs::create_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Rounds of every compared pair, unless a bench is told otherwise.
pub const DEFAULT_ROUNDS: usize = 5;

/// `median unit (min .., max .., n=..)` of `values`, `decimals` after the point.
pub(crate) fn summary(values: &[f64], unit: &str, decimals: usize) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    format!("{:.d$} {unit} (min {:.d$}, max {:.d$}, n={})", v[v.len() / 2], v[0], v[v.len() - 1], v.len(), d = decimals)
}

/// The `q` quantile of sorted values (nearest rank); NaN for none.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The results of each mode, one per round, in round order.
pub struct Rounds<M, T = f64> {
    pub modes: Vec<M>,
    /// `values[m][r]`: mode `m`'s result in round `r`.
    pub values: Vec<Vec<T>>,
}

impl<M: PartialEq + std::fmt::Debug, T> Rounds<M, T> {
    pub fn of(&self, mode: &M) -> &[T] {
        let i = self.modes.iter().position(|m| m == mode).unwrap_or_else(|| panic!("no mode {mode:?}"));
        &self.values[i]
    }
}

impl<M: PartialEq + std::fmt::Debug> Rounds<M, f64> {
    /// `a ÷ b` per round: each ratio compares two figures taken moments apart.
    pub fn ratios(&self, a: &M, b: &M) -> Vec<f64> {
        self.of(a).iter().zip(self.of(b)).map(|(x, y)| x / y).collect()
    }
}

/// Runs `measure` once per mode as a warm-up (results dropped), then `rounds` rounds of
/// every mode in the same order (A B A B …), so that a drift of the machine during the
/// bench falls on every mode alike. An error in any run fails the bench.
pub fn alternate<M: Clone + std::fmt::Debug, T>(
    area: &str,
    modes: &[M],
    rounds: usize,
    mut measure: impl FnMut(&M) -> Result<T>,
) -> Result<Rounds<M, T>> {
    if rounds == 0 {
        bail!("at least one round is needed");
    }
    for m in modes {
        progress(area, &format!("warm-up: {m:?}"));
        measure(m)?;
    }
    let mut values: Vec<Vec<T>> = modes.iter().map(|_| Vec::with_capacity(rounds)).collect();
    for r in 0..rounds {
        for (i, m) in modes.iter().enumerate() {
            progress(area, &format!("round {}/{rounds}: {m:?}", r + 1));
            values[i].push(measure(m)?);
        }
    }
    Ok(Rounds { modes: modes.to_vec(), values })
}

/// One `ID label: value unit` line as a program printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// `ID label`, e.g. `P7 creates-per-s@embedded`.
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// The figure lines of a program's output (lines starting `P<digits> `), in order.
pub fn parse_figures(text: &str) -> Vec<Figure> {
    text.lines()
        .filter_map(|line| {
            let id = line.split_whitespace().next()?;
            if !(id.len() > 1 && id.starts_with('P') && id[1..].bytes().all(|b| b.is_ascii_digit())) {
                return None;
            }
            let (name, rest) = line.rsplit_once(": ")?;
            let mut words = rest.split_whitespace();
            let value = words.next()?.parse().ok()?;
            Some(Figure { name: name.trim().to_string(), value, unit: words.next().unwrap_or("").to_string() })
        })
        .collect()
}

/// Prints each figure named in `runs` (the figures of every measured run) as its median
/// with the spread, in the order they first appear.
pub fn print_summaries(runs: &[Vec<Figure>], decimals: usize) {
    let mut names: Vec<(&str, &str)> = Vec::new();
    for f in runs.iter().flatten() {
        if !names.iter().any(|(n, _)| *n == f.name) {
            names.push((&f.name, &f.unit));
        }
    }
    for (name, unit) in names {
        let values: Vec<f64> = runs.iter().flatten().filter(|f| f.name == name).map(|f| f.value).collect();
        println!("{name}: {}", summary(&values, unit, decimals));
    }
}

fn output(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("({e})"),
    }
}

/// The offloads that change what a packet costs on a path: segmentation and receive
/// coalescing, and checksumming.
const OFFLOADS: &[&str] = &[
    "tx-checksumming",
    "rx-checksumming",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "rx-gro-list",
    "rx-udp-gro-forwarding",
    "tx-udp_tnl-segmentation",
];

/// Prints what the figures are taken on: kernel, CPUs, the data directory's filesystem
/// (if the bench has one), and the MTU and offloads of each device on the measured path
/// (`(namespace, device)`; `None` for the root namespace).
pub fn print_environment(data_dir: Option<&Path>, devices: &[(Option<&Netns>, &str)]) {
    println!("# env kernel: {}", output(Command::new("uname").arg("-r")));
    println!("# env cpus: {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    if let Some(dir) = data_dir {
        let fs = output(Command::new("stat").args(["-f", "-c", "%T"]).arg(dir));
        println!("# env data-dir {}: {fs}", dir.display());
    }
    print_devices(devices);
}

/// The `# env dev` lines of [`print_environment`] alone, for a device that exists only
/// while one of the compared modes is set up (a tunnel device).
pub fn print_devices(devices: &[(Option<&Netns>, &str)]) {
    for (ns, dev) in devices {
        let run = |args: &[&str]| match ns {
            Some(ns) => {
                let mut c = ns.command(args[0]);
                c.args(&args[1..]);
                output(&mut c)
            }
            None => output(Command::new(args[0]).args(&args[1..])),
        };
        let link = run(&["ip", "-o", "link", "show", "dev", dev]);
        let mtu = link.split_whitespace().skip_while(|w| *w != "mtu").nth(1).unwrap_or("?").to_string();
        let features = run(&["ethtool", "-k", dev]);
        let offloads: Vec<String> = features
            .lines()
            .filter_map(|l| {
                let (name, value) = l.trim().split_once(':')?;
                let on = value.split_whitespace().next()?;
                OFFLOADS.contains(&name).then(|| format!("{name}={on}"))
            })
            .collect();
        let place = ns.map(|n| n.name.as_str()).unwrap_or("root");
        println!("# env dev {place}/{dev}: mtu {mtu} {}", offloads.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternate_runs_modes_in_turn_after_a_warm_up() {
        let mut order = Vec::new();
        let mut n = 0.0;
        let rounds = alternate("test", &["a", "b"], 3, |m| {
            order.push(*m);
            n += 1.0;
            Ok(n)
        })
        .unwrap();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b", "a", "b"]);
        assert_eq!(rounds.of(&"a"), [3.0, 5.0, 7.0]);
        assert_eq!(rounds.ratios(&"b", &"a"), [4.0 / 3.0, 6.0 / 5.0, 8.0 / 7.0]);
    }

    #[test]
    fn a_failed_run_fails_the_bench() {
        let r = alternate("test", &["a"], 2, |_| -> Result<f64> { bail!("lost 3 connections") });
        assert!(r.is_err());
    }

    #[test]
    fn figures_are_parsed_from_a_programs_output() {
        let out = "created 10 pods\nP7 creates-per-s@etcd: 1234 creates/s\nP7 list-10-pods@etcd: 12.5 ms (min 1, max 2, n=3)\nPx no: 1 x\n";
        let f = parse_figures(out);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(
            (f[0].name.as_str(), f[0].value, f[0].unit.as_str()),
            ("P7 creates-per-s@etcd", 1234.0, "creates/s")
        );
        assert_eq!((f[1].name.as_str(), f[1].value, f[1].unit.as_str()), ("P7 list-10-pods@etcd", 12.5, "ms"));
    }

    #[test]
    fn summary_puts_the_median_first() {
        assert_eq!(summary(&[3.0, 1.0, 2.0], "x", 2), "2.00 x (min 1.00, max 3.00, n=3)");
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
