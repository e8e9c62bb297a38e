//! Local etcd clusters for tests: Debian's etcd 3.4 at /usr/bin/etcd (or `$SKIFF_ETCD`,
//! etcdctl next to it) as processes on 127.0.0.1 with free ports and a temporary data
//! dir, killed on drop. Without etcd, `Etcd::start` panics saying how to install it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::restartable_port;

/// etcd and etcdctl; panics with what to install when they are missing.
pub fn etcd_bins() -> (PathBuf, PathBuf) {
    let etcd = PathBuf::from(std::env::var("SKIFF_ETCD").unwrap_or_else(|_| "/usr/bin/etcd".into()));
    let etcdctl = etcd.with_file_name("etcdctl");
    assert!(
        etcd.exists() && etcdctl.exists(),
        "{} or {} is missing: run `cargo xtask setup` (Debian packages etcd-server, etcd-client) or set SKIFF_ETCD",
        etcd.display(),
        etcdctl.display()
    );
    (etcd, etcdctl)
}

pub struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of local processes in a temporary directory.
pub struct Etcd {
    etcd: PathBuf,
    etcdctl: PathBuf,
    pub members: Vec<Member>,
    initial_cluster: String,
    tmp: tempfile::TempDir,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> Self {
        let (etcd, etcdctl) = etcd_bins();
        let tmp = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: restartable_port(),
                peer_port: restartable_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Etcd { etcd, etcdctl, members, initial_cluster, tmp };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy(&(0..n).collect::<Vec<_>>());
        c
    }

    pub fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("{}.log", m.name)))
            .unwrap();
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.etcd)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.tmp.path().join(&m.name))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &format!("skiff-test-{}", std::process::id())])
            // Faster elections than the 100 ms / 1 s defaults keep the failover test short;
            // the client's retry window is sized for the defaults.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        self.members[i].child = Some(child);
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    pub fn log(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let l = std::fs::read_to_string(self.tmp.path().join(format!("{}.log", m.name))).unwrap_or_default();
            let tail: Vec<&str> = l.lines().rev().take(20).collect();
            out += &format!("--- {} (last lines)\n{}\n", m.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        out
    }

    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Output {
        Command::new(&self.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=2s")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn wait_healthy(&mut self, members: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let eps: Vec<String> = members.iter().map(|&i| self.url(i)).collect();
        loop {
            for &i in members {
                if let Some(status) = self.members[i].child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("etcd {} exited with {status}:\n{}", self.members[i].name, self.log());
                }
            }
            if self.etcdctl(&eps, &["endpoint", "health"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not become healthy in 30 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the current leader, from `etcdctl endpoint status` on the live members.
    pub fn leader(&self) -> Option<usize> {
        let live: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).collect();
        let eps: Vec<String> = live.iter().map(|&i| self.url(i)).collect();
        let out = self.etcdctl(&eps, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        for (n, st) in v.as_array()?.iter().enumerate() {
            let s = &st["Status"];
            if s["header"]["member_id"].is_u64() && s["header"]["member_id"] == s["leader"] {
                return Some(live[n]);
            }
        }
        None
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(&[i]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
