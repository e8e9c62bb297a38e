//! The echo image as a pod's container, run by a real containerd through the CRI, the
//! way the node agent will run it: imported from `target/images`, started in a sandbox
//! made from our pause image, reached from the node's network namespace at the pod IP.
//!
//! It checks what the kubelet tests rely on: HTTP on port 8080 answers with the pod's
//! name (the sandbox hostname, or `$POD_NAME`); `/readyz` is 200, turns 503 after
//! `/unready` and 200 again after `/ready`; UDP and the line protocol answer with the
//! name; `ExecSync` runs the shell-less exec targets (`/skiff-echo --version`, `exit`);
//! the container log holds the startup line and one line per request; StopContainer
//! ends it at once (it handles SIGTERM as PID 1); `--crash-after-ms` and `GET /crash`
//! exit with code 1, and `--termination-message` reaches the termination log.
//!
//! The pod network is Debian's reference `bridge` + `host-local` plugins: this test is
//! about the image, not skiff-cni. Privileged (root, containerd, a network namespace):
//! skipped locally without root, failed under `CI=true`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use skiff_tests::{
    containerd::{ContainerdNode, ContainerdOptions},
    cri::{ContainerSpec, CriClient, SandboxSpec},
    image::{self, ECHO_IMAGE},
    netns::{Netns, wait_until},
    ok, require_privileges, unique_tag,
};

/// The pod network of this test (a range no other test uses).
const POD_SUBNET: &str = "10.244.77.0/24";

/// A node (namespace + containerd with both images) with a bridge pod network.
/// Field order is drop order: containerd first (it removes its sandboxes), then the
/// namespace.
struct Node {
    containerd: ContainerdNode,
    ns: Netns,
    echo: PathBuf,
}

impl Node {
    fn start() -> Self {
        let images = vec![
            ok("building the pause image", image::pause_image()),
            ok("building the echo image", image::echo_image()),
        ];
        let echo = ok("building skiff-echo", image::echo_binary());
        let tag = unique_tag("eco");
        let ns = Netns::new(&format!("sk{tag}"));
        let opts = ContainerdOptions { images, ..ContainerdOptions::default() };
        let containerd = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &opts));
        for plugin in ["bridge", "host-local"] {
            ok(&format!("installing {plugin}"), containerd.install_system_cni_plugin(plugin));
        }
        let ipam_dir = containerd.cni_data_dir.join("ipam");
        let conflist = format!(
            r#"{{"cniVersion":"1.0.0","name":"echo-net","plugins":[{{"type":"bridge","bridge":"skecho0",
            "isGateway":true,"ipam":{{"type":"host-local","subnet":"{POD_SUBNET}","dataDir":"{}"}}}}]}}"#,
            ipam_dir.display()
        );
        ok("writing the conflist", containerd.write_cni_config("10-echo.conflist", &conflist));
        ok("waiting for NetworkReady", containerd.wait_network_ready(Duration::from_secs(10)));
        Self { containerd, ns, echo }
    }

    fn cri(&self) -> CriClient {
        ok("connecting to the CRI", self.containerd.cri())
    }

    /// Runs the static skiff-echo client in the node namespace; its stdout lines.
    fn client(&self, args: &[&str]) -> Vec<String> {
        let out = self.ns.command(self.echo.to_str().expect("UTF-8 path")).args(args).output().expect("spawn nsenter");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "skiff-echo {args:?}: {}{stdout}", String::from_utf8_lossy(&out.stderr));
        stdout.lines().map(str::to_owned).collect()
    }

    /// `GET path` at `addr` from the node namespace: `"STATUS BODY"`.
    fn get(&self, addr: &str, path: &str) -> String {
        self.client(&["get", addr, path]).join("\n")
    }

    /// Waits until `GET /readyz` at `addr` answers (the container is up), and returns
    /// the answer.
    fn wait_serving(&self, addr: &str) -> String {
        let mut last = String::new();
        let up = wait_until(Duration::from_secs(10), || {
            let out = self.ns.command(self.echo.to_str().unwrap()).args(["get", addr, "/readyz"]).output();
            last = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
            !last.is_empty()
        });
        assert!(up, "nothing answers HTTP at {addr} after 10 s; containerd log:\n{}", self.containerd.log_tail());
        last
    }
}

/// Creates and starts a container of the echo image; returns its id.
fn start_echo(cri: &mut CriClient, sandbox: (&str, &SandboxSpec), spec: ContainerSpec) -> String {
    let name = spec.name.clone();
    let id = ok(&format!("CreateContainer {name}"), cri.create_container(sandbox.0, sandbox.1, &spec));
    ok(&format!("StartContainer {name}"), cri.start_container(&id));
    id
}

/// The lines a container wrote, from its CRI log (`TIME STREAM TAG line` per line).
fn log_lines(path: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading the container log {}: {e}", path.display()));
    text.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).map(str::to_owned).collect()
}

#[test]
fn echo_image_runs_as_a_pod_container_through_the_cri() {
    if !require_privileges("echo_image_runs_as_a_pod_container_through_the_cri") {
        return;
    }
    let started = Instant::now();
    let node = Node::start();
    let mut cri = node.cri();
    let logs = node.containerd.dir.join("pod-logs");
    let sandbox = SandboxSpec {
        log_directory: logs.to_string_lossy().into_owned(),
        ..SandboxSpec::new("echo-pod", "default", &format!("uid-{}", std::process::id()))
    };
    let sandbox_id = ok("RunPodSandbox", cri.run_pod_sandbox(&sandbox));
    let ip = ok("PodSandboxStatus", cri.pod_ip(&sandbox_id)).expect("the sandbox has an IP");
    let addr = format!("{ip}:8080");

    // The image's entrypoint with no arguments: serve on 8080, named after the hostname.
    let mut spec = ContainerSpec::new("echo", ECHO_IMAGE);
    spec.log_path = "echo/0.log".into();
    let echo = start_echo(&mut cri, (&sandbox_id, &sandbox), spec);
    assert_eq!(node.wait_serving(&addr), "200 ready");
    assert_eq!(node.get(&addr, "/"), "200 echo-pod", "HTTP must report the pod's name");
    assert_eq!(node.get(&addr, "/healthz"), "200 ok");
    assert_eq!(node.get(&addr, "/unready"), "200 unready");
    assert_eq!(node.get(&addr, "/readyz"), "503 unready");
    assert_eq!(node.get(&addr, "/ready"), "200 ready");
    assert_eq!(node.get(&addr, "/readyz"), "200 ready");
    assert_eq!(node.client(&["udp", &addr]), ["ok echo-pod", "sent=1 ok=1 failed=0"]);
    assert_eq!(node.client(&["tcp", &addr]), ["ok echo-pod", "sent=1 ok=1 failed=0"]);

    let version =
        ok("ExecSync --version", cri.exec_sync(&echo, &["/skiff-echo", "--version"], Duration::from_secs(10)));
    assert_eq!(version.exit_code, 0, "stderr: {}", String::from_utf8_lossy(&version.stderr));
    assert_eq!(String::from_utf8_lossy(&version.stdout), format!("skiff-echo {}\n", env!("CARGO_PKG_VERSION")));
    let exit = ok("ExecSync exit", cri.exec_sync(&echo, &["/skiff-echo", "exit", "3", "bye"], Duration::from_secs(10)));
    assert_eq!((exit.exit_code, String::from_utf8_lossy(&exit.stdout).into_owned()), (3, "bye\n".to_owned()));

    let lines = log_lines(&logs.join("echo/0.log"));
    assert!(lines.iter().any(|l| l.contains("serving as echo-pod on tcp 8080")), "no startup line: {lines:#?}");
    let readyz = lines.iter().filter(|l| l.starts_with("http ") && l.contains("GET /readyz")).count();
    assert!(readyz >= 3, "expected a log line per /readyz request: {lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("udp ")), "no log line for the UDP request: {lines:#?}");

    // SIGTERM ends it at once, although it is PID 1 of its PID namespace.
    let stopping = Instant::now();
    ok("StopContainer", cri.stop_container(&echo, Duration::from_secs(30)));
    let status = ok("ContainerStatus", cri.wait_container_exited(&echo, Duration::from_secs(5)));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "StopContainer took {:?}: SIGTERM ignored?",
        stopping.elapsed()
    );
    assert_eq!(status.exit_code, 0, "SIGTERM must end skiff-echo with 0: {status:?}");
    ok("RemoveContainer", cri.remove_container(&echo));

    // --crash-after-ms: exit code 1 and the termination message; $POD_NAME names it.
    let termination_log = node.containerd.dir.join("termination-log");
    std::fs::write(&termination_log, "").expect("creating the termination log");
    let mut spec = ContainerSpec::new("crasher", ECHO_IMAGE);
    spec.args = ["--crash-after-ms", "300", "--tcp", "8081", "--termination-message", "crashed on purpose"]
        .map(String::from)
        .to_vec();
    spec.env = vec![("POD_NAME".into(), "named-by-env".into())];
    spec.mounts = vec![(termination_log.to_string_lossy().into_owned(), "/dev/termination-log".into())];
    spec.log_path = "crasher/0.log".into();
    let crasher = start_echo(&mut cri, (&sandbox_id, &sandbox), spec);
    let status = ok("ContainerStatus", cri.wait_container_exited(&crasher, Duration::from_secs(10)));
    assert_eq!(status.exit_code, 1, "--crash-after-ms must exit 1: {status:?}");
    assert_eq!(std::fs::read_to_string(&termination_log).unwrap(), "crashed on purpose");
    let lines = log_lines(&logs.join("crasher/0.log"));
    assert!(lines.iter().any(|l| l.contains("serving as named-by-env")), "$POD_NAME not used: {lines:#?}");
    ok("RemoveContainer", cri.remove_container(&crasher));

    // GET /crash: answered, then exit code 1.
    let mut spec = ContainerSpec::new("crash-endpoint", ECHO_IMAGE);
    spec.args = ["serve", "--tcp", "8082"].map(String::from).to_vec();
    let crash = start_echo(&mut cri, (&sandbox_id, &sandbox), spec);
    let crash_addr = format!("{ip}:8082");
    assert_eq!(node.wait_serving(&crash_addr), "200 ready");
    assert_eq!(node.get(&crash_addr, "/crash"), "200 crashing");
    let status = ok("ContainerStatus", cri.wait_container_exited(&crash, Duration::from_secs(10)));
    assert_eq!(status.exit_code, 1, "GET /crash must exit 1: {status:?}");
    ok("RemoveContainer", cri.remove_container(&crash));

    ok("StopPodSandbox", cri.stop_pod_sandbox(&sandbox_id));
    ok("RemovePodSandbox", cri.remove_pod_sandbox(&sandbox_id));
    drop(cri);
    drop(node);
    eprintln!("echo container test took {:?}", started.elapsed());
}
