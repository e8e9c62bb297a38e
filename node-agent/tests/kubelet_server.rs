//! The kubelet server (`skiff_node::server`) behind a real skiff-control, driven by
//! kubectl 1.32, with containers running in a real containerd: `kubectl logs` (plain,
//! `--previous`, `--tail`, `--timestamps`, `--since`, `-f` until the container stops),
//! `kubectl exec` (output and exit code, a failing command's exit code, `-i` with
//! piped stdin that the command reads to its end, `-it` under a pty), `kubectl attach
//! -i` and `kubectl port-forward` (to a pod on the node's network, and to a server
//! bound to a pod's own 127.0.0.1) go through the API server's `pods/log`,
//! `pods/exec`, `pods/attach` and `pods/portforward` to the kubelet server, which reads
//! the CRI log files, relays exec and attach to containerd's streaming server (SPDY)
//! and forwards ports inside the pod's network namespace. The kubelet core is not part
//! of this: the test places the containers through the CRI itself and tells the server
//! where they are. The pod with a network of its own gets it from Debian's reference
//! `bridge` + `host-local` CNI plugins, inside the test's namespace.
//!
//! Everything meets in one network namespace of the test's own: the test thread enters
//! it before it starts skiff-control, the kubelet server and kubectl, so all of them
//! (and containerd's streaming server) talk over that namespace's 127.0.0.1 only.
//!
//! Needs root; skips without it, fails under CI=true. Guards stop skiff-control,
//! containerd (with its containers) and remove the namespace even when the test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use skiff_node::server::{APISERVER_CLIENT_CN, ContainerLocation, ContainerLocator, LocateError, Server, Settings};
use skiff_tests::containerd::{ContainerdNode, ContainerdOptions};
use skiff_tests::cri::{ContainerSpec, CriClient, SandboxSpec};
use skiff_tests::netns::{ChildGuard, Netns, wait_until};
use skiff_tests::{image, ok, require_privileges, unique_tag, workspace_bin};

const NODE: &str = "kl-node";
const API_PORT: u16 = 6443;
const KUBELET_PORT: u16 = 10250;
const FORWARD_PORT: u16 = 18080;
/// The local port of the forward to the pod with its own network.
const INNER_FORWARD_PORT: u16 = 18081;
/// The pod network, inside the test's namespace only.
const POD_SUBNET: &str = "10.244.77.0/24";
/// What the serving instance of `app` logs when it starts.
const SERVING: &str = "serving as web";
const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// The test's locator: the containers it placed, by (namespace, pod, container).
#[derive(Default)]
struct Placed(Mutex<HashMap<(String, String, String), ContainerLocation>>);

impl Placed {
    fn put(&self, pod: &str, container: &str, loc: ContainerLocation) {
        self.0.lock().unwrap().insert(("default".into(), pod.into(), container.into()), loc);
    }

    fn set_running(&self, pod: &str, container: &str, running: bool) {
        if let Some(l) = self.0.lock().unwrap().get_mut(&("default".into(), pod.into(), container.into())) {
            l.running = running;
        }
    }
}

impl ContainerLocator for Placed {
    fn locate(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<ContainerLocation, LocateError> {
        let map = self.0.lock().unwrap();
        let mut available: Vec<String> =
            map.keys().filter(|(n, p, _)| n == namespace && p == pod).map(|k| k.2.clone()).collect();
        available.sort();
        if available.is_empty() {
            return Err(LocateError::PodNotFound { namespace: namespace.into(), pod: pod.into() });
        }
        let name = match container {
            Some(c) => c.to_string(),
            None if available.len() == 1 => available[0].clone(),
            None => return Err(LocateError::ContainerNameRequired { pod: pod.into(), available }),
        };
        map.get(&(namespace.into(), pod.into(), name.clone())).cloned().ok_or(LocateError::ContainerNotFound {
            pod: pod.into(),
            container: name,
            available,
        })
    }
}

/// Moves this thread, and so every process and thread it starts from now on, into `ns`.
fn enter(ns: &Netns) {
    let f = std::fs::File::open(ns.path()).expect("open the namespace");
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the test's namespace");
}

struct Kubectl {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.env("KUBECONFIG", &self.kubeconfig).env("HOME", &self.home).args(args);
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("cannot run kubectl 1.32")
    }

    /// Runs kubectl and returns its stdout; panics with its stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl with `input` on its stdin, which then ends; fails the test if kubectl
    /// is still running `limit` later.
    fn with_stdin(&self, args: &[&str], input: &[u8], limit: Duration) -> Output {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let started = Instant::now();
        while started.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("kubectl {} did not end within {limit:?} of its stdin's end: {out:?}", args.join(" "));
    }

    /// `kubectl port-forward pod/POD LOCAL:REMOTE`, once it listens.
    fn port_forward(&self, pod: &str, local: u16, remote: u16) -> ChildGuard {
        let forward = self
            .command(&["port-forward", &format!("pod/{pod}"), &format!("{local}:{remote}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let forward = ChildGuard::new(forward);
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", local)).is_ok()),
            "kubectl port-forward pod/{pod} did not listen on {local}"
        );
        forward
    }

    fn apply(&self, dir: &Path, name: &str, obj: &serde_json::Value) {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, obj.to_string()).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()]);
    }
}

fn start_container(cri: &Mutex<CriClient>, sandbox_id: &str, sandbox: &SandboxSpec, spec: &ContainerSpec) -> String {
    let mut cri = cri.lock().unwrap();
    let id = ok(&format!("creating container {}", spec.name), cri.create_container(sandbox_id, sandbox, spec));
    ok(&format!("starting container {}", spec.name), cri.start_container(&id));
    id
}

/// Creates pod `name` with `containers` on the node; returns its log directory and the
/// sandbox the kubelet would give it.
fn create_pod(
    k: &Kubectl,
    dir: &Path,
    name: &str,
    containers: serde_json::Value,
    host_network: bool,
) -> (PathBuf, SandboxSpec) {
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": containers}});
    k.apply(dir, name, &pod);
    let uid = k.ok(&["get", "pod", name, "-o", "jsonpath={.metadata.uid}"]);
    let log_dir = dir.join(format!("pods/default_{name}_{uid}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let sandbox = SandboxSpec {
        log_directory: log_dir.to_string_lossy().into_owned(),
        host_network,
        ..SandboxSpec::new(name, "default", &uid)
    };
    (log_dir, sandbox)
}

/// The echo server's answer to a line, through a local port.
fn ask(port: u16) -> String {
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&conn).write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&conn).read_line(&mut answer).unwrap();
    answer
}

/// Lines of a child's output as they come, read by a thread of their own.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn echo(name: &str, attempt: u32, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        command: std::iter::once("/skiff-echo").chain(args.iter().copied()).map(String::from).collect(),
        attempt,
        log_path: format!("{name}/{attempt}.log"),
        ..ContainerSpec::new(name, image::ECHO_IMAGE)
    }
}

#[test]
fn kubectl_logs_exec_and_port_forward_reach_containers_through_the_kubelet_server() {
    if !require_privileges("kubectl_logs_exec_and_port_forward_reach_containers_through_the_kubelet_server") {
        return;
    }
    // Built before entering the namespace (a build may want the network).
    let pause = ok("building the pause image", image::pause_image());
    let echo_image = ok("building the echo image", image::echo_image());
    let control_bin = workspace_bin("skiff-control");
    let tag = unique_tag("kl");
    let ns = Netns::new(&format!("sk{tag}"));
    enter(&ns);
    let dir = tempfile::tempdir().unwrap();
    let opts = ContainerdOptions { images: vec![pause, echo_image], ..ContainerdOptions::default() };
    let node = ok("starting containerd", ContainerdNode::start(&tag, &ns.path(), &opts));
    let cri = Arc::new(Mutex::new(ok("connecting to the CRI", node.cri())));
    for plugin in ["bridge", "host-local"] {
        ok(&format!("installing {plugin}"), node.install_system_cni_plugin(plugin));
    }
    let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": "kl-net", "plugins": [{
        "type": "bridge", "bridge": "skkl0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]], "dataDir": node.cni_data_dir.join("host-local")},
    }]});
    ok("writing the conflist", node.write_cni_config("10-kl.conflist", &conflist.to_string()));
    ok("waiting for NetworkReady", node.wait_network_ready(Duration::from_secs(10)));

    let data = dir.path().join("control");
    let log = std::fs::File::create(dir.path().join("control.log")).unwrap();
    let _control = ChildGuard::new(
        Command::new(&control_bin)
            .arg("--data-dir")
            .arg(&data)
            .args(["--bind-address", "127.0.0.1", "--port", &API_PORT.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start skiff-control"),
    );
    assert!(
        wait_until(Duration::from_secs(30), || data.join("admin.kubeconfig").exists()
            && std::net::TcpStream::connect(("127.0.0.1", API_PORT)).is_ok()),
        "skiff-control did not come up in 30 s"
    );
    let k = Kubectl { kubeconfig: data.join("admin.kubeconfig"), home: dir.path().to_path_buf() };

    // The kubelet server, trusting the cluster CA for its clients.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let placed = Arc::new(Placed::default());
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let settings = Settings {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), KUBELET_PORT),
        ..Settings::new(NODE, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], ca)
    };
    assert_eq!(settings.allowed_users, [APISERVER_CLIENT_CN]);
    let server = rt.block_on(Server::bind(settings)).expect("binding the kubelet server");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Exec goes through the agent's own CRI client.
    let runtime = {
        let _in_runtime = rt.enter();
        Arc::new(skiff_node::cri::CriClient::new(&node.socket))
    };
    rt.spawn(server.run(placed.clone(), runtime, async move {
        let _ = stopped.await;
    }));

    // The Node, with the kubelet's address, and a pod bound to it.
    k.apply(dir.path(), "node", &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}));
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
    }});
    k.ok(&["patch", "node", NODE, "--subresource=status", "--type=merge", "-p", &status.to_string()]);
    let containers = serde_json::json!([
        {"name": "app", "image": image::ECHO_IMAGE}, {"name": "ticker", "image": image::ECHO_IMAGE},
        {"name": "reader", "image": image::ECHO_IMAGE, "stdin": true}]);
    let (log_dir, sandbox) = create_pod(&k, dir.path(), "web", containers, true);

    // The containers, placed through the CRI as the kubelet would: app's first instance
    // fails at once, its second serves; the ticker prints a line every ~100 ms; the
    // reader copies its stdin.
    let sb = ok("RunPodSandbox", cri.lock().unwrap().run_pod_sandbox(&sandbox));
    let first = start_container(&cri, &sb, &sandbox, &echo("app", 0, &["bogus"]));
    ok("app's first instance exiting", cri.lock().unwrap().wait_container_exited(&first, Duration::from_secs(10)));
    let app = start_container(&cri, &sb, &sandbox, &echo("app", 1, &["serve", "--name", "web", "--tcp", "8080"]));
    let ticker_args = ["udp", "127.0.0.1:9", "--count", "3000", "--interval-ms", "100", "--timeout-ms", "20"];
    let ticker = start_container(&cri, &sb, &sandbox, &echo("ticker", 0, &ticker_args));
    let reader = start_container(&cri, &sb, &sandbox, &ContainerSpec { stdin: true, ..echo("reader", 0, &["cat"]) });
    let located = |id: &str, name: &str, previous: Option<&str>| ContainerLocation {
        container_id: id.into(),
        running: true,
        log_path: log_dir.join(name),
        previous_log_path: previous.map(|p| log_dir.join(p)),
        sandbox_id: sb.clone(),
        pod_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    placed.put("web", "app", located(&app, "app/1.log", Some("app/0.log")));
    placed.put("web", "ticker", located(&ticker, "ticker/0.log", None));
    placed.put("web", "reader", located(&reader, "reader/0.log", None));

    // --- logs ---
    assert!(
        wait_until(Duration::from_secs(10), || k.ok(&["logs", "web", "-c", "app"]).contains(SERVING)),
        "kubectl logs web -c app never showed {SERVING:?}: {:?}",
        k.output(&["logs", "web", "-c", "app"])
    );
    let previous = k.ok(&["logs", "web", "-c", "app", "--previous"]);
    assert!(previous.contains("unknown command bogus"), "--previous: {previous:?}");
    let stamped = k.ok(&["logs", "web", "-c", "app", "--timestamps"]);
    let (time, text) = stamped.trim_end().split_once(' ').unwrap_or_default();
    assert!(time.parse::<jiff::Timestamp>().is_ok() && text.contains(SERVING), "--timestamps: {stamped:?}");
    std::thread::sleep(Duration::from_secs(3));
    let all = k.ok(&["logs", "web", "-c", "ticker"]);
    assert!(all.lines().count() >= 20 && all.lines().all(|l| l.starts_with("ok ") || l.starts_with("err ")), "{all}");
    let tail = k.ok(&["logs", "web", "-c", "ticker", "--tail=2"]);
    assert_eq!(tail.lines().count(), 2, "--tail=2: {tail:?}");
    let recent = k.ok(&["logs", "web", "-c", "ticker", "--since=1s"]).lines().count();
    assert!(recent > 0 && recent < all.lines().count(), "--since=1s gave {recent} of {} lines", all.lines().count());
    let limited = k.ok(&["logs", "web", "-c", "ticker", "--limit-bytes=7"]);
    assert_eq!(limited.len(), 7, "--limit-bytes=7: {limited:?}");

    // -f streams new lines, and ends when the container stops.
    let mut follow = k
        .command(&["logs", "-f", "web", "-c", "ticker", "--tail=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(follow.stdout.take().unwrap());
    let mut follow = ChildGuard::new(follow);
    let started = Instant::now();
    for i in 0..5 {
        let line = lines.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("logs -f: no line {i} in 5 s"));
        assert!(line.starts_with("ok ") || line.starts_with("err "), "logs -f: {line:?}");
    }
    assert!(started.elapsed() > Duration::from_millis(300), "logs -f gave 5 lines at once: it does not follow");
    ok("stopping the ticker", cri.lock().unwrap().stop_container(&ticker, Duration::from_secs(2)));
    placed.set_running("web", "ticker", false);
    let child = follow.0.as_mut().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || child.try_wait().is_ok_and(|s| s.is_some())),
        "kubectl logs -f did not end after its container stopped"
    );

    // --- exec ---
    let out = k.output(&["exec", "web", "-c", "app", "--", "/skiff-echo", "--version"]);
    assert!(out.status.success() && out.stdout.starts_with(b"skiff-echo "), "exec --version: {out:?}");
    let out = k.output(&["exec", "web", "-c", "app", "--", "/skiff-echo", "exit", "3", "three"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "exec exit 3: {out:?}");
    assert!(out.stdout == b"three\n" && stderr.contains("command terminated with exit code 3"), "{out:?}");
    let out = k.output(&["exec", "web", "-c", "app", "--", "/skiff-echo", "tcp", "127.0.0.1:8080"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("ok web"), "exec: {out:?}");
    let out = k.output(&["exec", "web", "-c", "app", "--", "/skiff-echo", "bogus"]);
    assert_eq!(out.status.code(), Some(1), "exec of a failing command: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown command bogus") && stderr.contains("command terminated with exit code 1"),
        "{stderr}"
    );
    // -i: stdin is streamed (the command does not read it; it must still run and end).
    let limit = Duration::from_secs(20);
    let args = ["exec", "-i", "web", "-c", "app", "--", "/skiff-echo", "tcp", "127.0.0.1:8080"];
    let out = k.with_stdin(&args, b"hello\n", limit);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok web"), "exec -i: {out:?}");
    // -i with a command that reads its stdin to the end: the end of kubectl's stdin
    // reaches it, it ends, and kubectl exits with its code.
    let out = k.with_stdin(&["exec", "-i", "web", "-c", "app", "--", "/skiff-echo", "cat"], b"hello\nworld\n", limit);
    assert!(out.status.success() && out.stdout == b"hello\nworld\n", "exec -i cat: {out:?}");
    let args = ["exec", "-i", "web", "-c", "app", "--", "/skiff-echo", "cat", "--exit", "4"];
    let out = k.with_stdin(&args, b"four\n", limit);
    assert!(out.status.code() == Some(4) && out.stdout == b"four\n", "exec -i cat --exit 4: {out:?}");
    let out = k.with_stdin(&["exec", "-i", "web", "-c", "app", "--", "/skiff-echo", "cat"], b"", limit);
    assert!(out.status.success() && out.stdout.is_empty(), "exec -i cat of an empty stdin: {out:?}");
    // -it under a pty (`script`): a tty session with its initial resize.
    let line = format!("{KUBECTL} exec -it web -c app -- /skiff-echo tcp 127.0.0.1:8080; echo exit=$?");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KUBECONFIG", &k.kubeconfig)
        .env("HOME", &k.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok web") && text.contains("exit=0"), "exec -it: {out:?}");

    // --- port-forward (kubectl wants a Running pod) ---
    let running = serde_json::json!({"status": {"phase": "Running", "podIP": "127.0.0.1"}});
    k.ok(&["patch", "pod", "web", "--subresource=status", "--type=merge", "-p", &running.to_string()]);
    let _forward = k.port_forward("web", FORWARD_PORT, 8080);
    // Two connections one after the other: each is a pair of streams in one session.
    for i in 0..2 {
        let answer = ask(FORWARD_PORT);
        assert_eq!(answer.trim(), "web", "port-forward connection {i}: {answer:?}");
    }

    // --- attach -i: a line written reaches the container's process, whose copy of it
    // comes back ---
    let mut attach = k
        .command(&["attach", "-i", "web", "-c", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut attach_in = attach.stdin.take().unwrap();
    let attached = lines_of(attach.stdout.take().unwrap());
    let attach_guard = ChildGuard::new(attach);
    // Written until its copy shows: kubectl may not be attached yet when the first goes.
    let started = Instant::now();
    let mut echoed = false;
    while !echoed && started.elapsed() < Duration::from_secs(15) {
        attach_in.write_all(b"through attach\n").unwrap();
        echoed = attached.recv_timeout(Duration::from_secs(1)).is_ok_and(|l| l == "through attach");
    }
    assert!(echoed, "kubectl attach -i: the line never came back");
    drop(attach_guard);

    // --- port-forward to a pod with a network of its own, whose server listens on the
    // pod's 127.0.0.1 only: reachable inside the pod's namespace, not at its IP ---
    let containers = serde_json::json!([{"name": "srv", "image": image::ECHO_IMAGE}]);
    let (lo_logs, lo_sandbox) = create_pod(&k, dir.path(), "lo", containers, false);
    let lo_sb = ok("RunPodSandbox (own network)", cri.lock().unwrap().run_pod_sandbox(&lo_sandbox));
    let lo_ip = ok("the pod's IP", cri.lock().unwrap().pod_ip(&lo_sb)).expect("the pod has no IP");
    let srv_args = ["serve", "--name", "inner", "--tcp", "8081", "--listen", "127.0.0.1"];
    let srv = start_container(&cri, &lo_sb, &lo_sandbox, &echo("srv", 0, &srv_args));
    placed.put(
        "lo",
        "srv",
        ContainerLocation {
            container_id: srv,
            running: true,
            log_path: lo_logs.join("srv/0.log"),
            previous_log_path: None,
            sandbox_id: lo_sb.clone(),
            // No IP for the server: only the pod's namespace can lead to the port.
            pod_ip: None,
        },
    );
    assert!(
        wait_until(Duration::from_secs(10), || k.ok(&["logs", "lo"]).contains("serving as inner")),
        "the pod lo's server did not start: {:?}",
        k.output(&["logs", "lo"])
    );
    let running = serde_json::json!({"status": {"phase": "Running", "podIP": lo_ip.to_string()}});
    k.ok(&["patch", "pod", "lo", "--subresource=status", "--type=merge", "-p", &running.to_string()]);
    let refused = std::net::TcpStream::connect_timeout(&SocketAddr::new(lo_ip, 8081), Duration::from_secs(2));
    assert!(refused.is_err(), "the server bound to the pod's 127.0.0.1 answers at {lo_ip}");
    let _inner_forward = k.port_forward("lo", INNER_FORWARD_PORT, 8081);
    let answer = ask(INNER_FORWARD_PORT);
    assert_eq!(answer.trim(), "inner", "port-forward to the pod's 127.0.0.1: {answer:?}");

    // --- nodes/proxy reaches the kubelet's own endpoints ---
    assert_eq!(k.ok(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy/healthz")]).trim(), "ok");
    let metrics = k.ok(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy/metrics")]);
    let execs = metrics.lines().find_map(|l| l.strip_prefix("skiff_kubelet_server_exec_sessions_total "));
    assert_eq!(execs, Some("9"), "nine exec sessions so far: {metrics}");
    let attaches = metrics.lines().find_map(|l| l.strip_prefix("skiff_kubelet_server_attach_sessions_total "));
    assert_eq!(attaches, Some("1"), "one attach session so far: {metrics}");

    // --- RBAC: a user who may read pods but nothing more gets no logs and no exec ---
    let grant = |name: &str, resource: &str| {
        let rbac = "rbac.authorization.k8s.io/v1";
        let role = serde_json::json!({"apiVersion": rbac, "kind": "Role", "metadata": {"name": name, "namespace": "default"},
            "rules": [{"apiGroups": [""], "resources": [resource], "verbs": ["get", "list"]}]});
        k.apply(dir.path(), name, &role);
        let binding = serde_json::json!({"apiVersion": rbac, "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]});
        k.apply(dir.path(), &format!("{name}-binding"), &binding);
    };
    grant("pod-reader", "pods");
    let token = k.ok(&["create", "token", "default"]);
    let reader_config = dir.path().join("reader.kubeconfig");
    std::fs::write(
        &reader_config,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: r\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{API_PORT}\n    certificate-authority: {}\ncontexts:\n- name: r\n  context: {{cluster: c, user: r}}\nusers:\n- name: r\n  user:\n    token: {}\n",
            data.join("pki/ca.crt").display(),
            token.trim()
        ),
    )
    .unwrap();
    let reader = Kubectl { kubeconfig: reader_config, home: dir.path().to_path_buf() };
    reader.ok(&["get", "pod", "web"]);
    for (args, sub) in [
        (&["logs", "web", "-c", "app"][..], "pods/log"),
        (&["exec", "web", "-c", "app", "--", "/x"], "pods/exec"),
        (&["attach", "web", "-c", "reader"], "pods/attach"),
    ] {
        let out = reader.output(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("forbidden") && stderr.contains(sub), "{args:?}: {stderr}");
    }
    grant("log-reader", "pods/log");
    assert!(
        wait_until(Duration::from_secs(10), || String::from_utf8_lossy(
            &reader.output(&["logs", "web", "-c", "app"]).stdout
        )
        .contains(SERVING)),
        "granted get on pods/log, the reader still gets no logs"
    );

    // --- the kubelet server itself ---
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{KUBELET_PORT}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("/healthz"), "200");
    assert_eq!(curl("/containerLogs/default/web/app"), "403", "a client without the API server's certificate");

    let _ = stop.send(());
    drop(follow);
    rt.shutdown_timeout(Duration::from_secs(2));
}
