//! Shared by the control plane's integration tests: a guard that runs `skiff-control` on
//! 127.0.0.1 with a free port and a temporary data dir (killed on drop, even when the
//! test panics), kubectl helpers bound to its admin kubeconfig, and a bounded wait.
//!
//! kubectl is v1.32 when installed as `kubectl.1.32` next to Google Cloud's dispatcher,
//! else `kubectl` on PATH, or `$SKIFF_KUBECTL`. A missing kubectl fails the test with a
//! message saying how to get it: `cargo xtask test` installs every tool the tests use,
//! so a skip would only hide a broken setup.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod etcd;
pub mod fake_kubelet;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub fn kubectl_bin() -> PathBuf {
    if let Ok(k) = std::env::var("SKIFF_KUBECTL") {
        return k.into();
    }
    let pinned = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    if pinned.exists() {
        return pinned.into();
    }
    if Command::new("kubectl").arg("version").arg("--client").output().is_ok() {
        return "kubectl".into();
    }
    panic!(
        "kubectl not found (neither {} nor `kubectl` on PATH); install kubectl 1.32 or set SKIFF_KUBECTL",
        pinned.display()
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free port below Linux's default ephemeral range (32768–60999), for a server that
/// is stopped and started again on the same port: while it is down, any outgoing
/// connection on the machine may take a free ephemeral port as its own, and the restart
/// then fails with "address already in use". Ports here are only ever bound on purpose.
pub fn restartable_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Test binaries run beside each other: start each process somewhere else.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..SPAN {
        let port = (FIRST + seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// Polls `f` every 100 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub kubectl: PathBuf,
    args: Vec<String>,
    pub tmp: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts skiff-control with extra flags.
    pub fn start_with(args: &[&str]) -> Self {
        let kubectl = kubectl_bin();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let args = args.iter().map(|s| s.to_string()).collect();
        let mut s = Server { child: None, dir, port: free_port(), kubectl, args, tmp };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.tmp.path().join("server.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skiff-control"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--bind-address", "127.0.0.1", "--port", &self.port.to_string()])
            .args(&self.args)
            .env("RUST_LOG", "info")
            // tracing writes to stdout; keep both streams in the log.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start skiff-control");
        self.child = Some(child);
        // Generous: on an etcd cluster that has lost a member, start-up waits out retries.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.kubeconfig().exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("skiff-control exited with {status}: {}", self.log());
            }
            assert!(Instant::now() < deadline, "skiff-control did not come up in 30 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// An API client with the admin credentials.
    pub fn client(&self) -> skiff_api::Client {
        skiff_api::Client::from_kubeconfig(&self.kubeconfig(), "skiff-control-tests").unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("server.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// kubectl with the admin kubeconfig (its cache under the temp dir, not $HOME).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", self.kubeconfig()).env("HOME", self.tmp.path());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs kubectl and panics with its output (and the server log's tail) unless it
    /// succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}\n--- server log tail ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log(), 60)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Polls `check` (every 200 ms, at most `secs`) until it holds; panics naming `what`,
    /// with the server log's tail.
    pub fn wait_for(&self, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out after {secs} s waiting for {what}\n--- server log tail ---\n{}", tail(&self.log(), 80));
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Writes a file under the temp dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// `kubectl apply -f` of an inline manifest.
    pub fn apply(&self, name: &str, manifest: &str) -> String {
        let f = self.write(name, manifest);
        self.ok(&["apply", "-f", &f])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server's log explains a failure; SKIFF_SHOW_LOG shows it on success too.
        if std::thread::panicking() || std::env::var_os("SKIFF_SHOW_LOG").is_some() {
            eprintln!("--- skiff-control log ---\n{}", self.log());
        }
        self.stop();
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `web` Deployment (`replicas` pods of nginx:1.27 on port 80, labelled app=web) and
/// the Service in front of it, as one YAML stream for `kubectl apply`.
pub fn web_manifest(replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
  - port: 80
    targetPort: 80
"#
    )
}

/// A fake Node manifest: Ready, with the given allocatable cpu/memory, labels and taints
/// (YAML flow snippets).
pub fn node_manifest(name: &str, cpu: &str, memory: &str, labels: &str, taints: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}{labels}}}}}\n\
         spec: {{taints: [{taints}]}}\n\
         status:\n  allocatable: {{cpu: \"{cpu}\", memory: {memory}, pods: \"110\"}}\n  capacity: {{cpu: \"{cpu}\", memory: {memory}, pods: \"110\"}}\n  \
         conditions: [{{type: Ready, status: \"True\", reason: KubeletReady}}]\n"
    )
}
