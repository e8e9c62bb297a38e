//! One attempt of each handler against real sockets on 127.0.0.1 (real time: the
//! timeouts here are one second) and a fake ExecRunner.

use std::time::Duration;

use k8s_openapi::api::core::v1::{GRPCAction, HTTPHeader, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use super::support::{Answer, FakeExec, LOCALHOST, Step, TestServer, closed_port, exec_probe, http_probe, target};
use crate::kubelet::probe::http::{self, ProbeRequest};
use crate::kubelet::probe::{HandlerTarget, ProbeOutcome, run_probe};

async fn probe_http(server_port: u16, probe: &Probe) -> ProbeOutcome {
    run_probe(probe, &target(server_port), &*FakeExec::new()).await
}

#[tokio::test]
async fn http_success_sends_path_and_default_headers() {
    let server = TestServer::http(|_| Answer::status(200)).await;
    let probe = http_probe(IntOrString::Int(server.port.into()), "/healthz?full=1");
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/healthz?full=1");
    assert_eq!(seen[0].header("user-agent"), Some("kube-probe/1.33"));
    assert_eq!(seen[0].header("accept"), Some("*/*"));
    assert_eq!(seen[0].header("host"), Some(format!("127.0.0.1:{}", server.port).as_str()));
}

#[tokio::test]
async fn http_status_boundaries() {
    for (status, success) in [(200, true), (204, true), (399, true), (400, false), (503, false)] {
        let server = TestServer::http(move |_| Answer::status(status)).await;
        let probe = http_probe(IntOrString::Int(server.port.into()), "/");
        let outcome = probe_http(server.port, &probe).await;
        if success {
            assert_eq!(outcome, ProbeOutcome::Success, "status {status}");
        } else {
            assert_eq!(outcome, ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {status}")),);
        }
    }
}

#[tokio::test]
async fn http_custom_headers_override_defaults() {
    let server = TestServer::http(|_| Answer::status(200)).await;
    let mut probe = http_probe(IntOrString::Int(server.port.into()), "ready");
    probe.http_get.as_mut().unwrap().http_headers = Some(vec![
        HTTPHeader { name: "Host".to_owned(), value: "app.example".to_owned() },
        HTTPHeader { name: "X-Probe".to_owned(), value: "yes".to_owned() },
        HTTPHeader { name: "User-Agent".to_owned(), value: "mine".to_owned() },
    ]);
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    let seen = &server.seen()[0];
    // A path without a leading slash gets one.
    assert_eq!(seen.path, "/ready");
    assert_eq!(seen.header("host"), Some("app.example"));
    assert_eq!(seen.header("x-probe"), Some("yes"));
    assert_eq!(seen.header("user-agent"), Some("mine"));
}

#[tokio::test]
async fn http_named_port_resolves_against_container_ports() {
    let server = TestServer::http(|_| Answer::status(200)).await;
    let probe = http_probe(IntOrString::String("http".to_owned()), "/");
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    // A number written as a string is taken as the number.
    let probe = http_probe(IntOrString::String(server.port.to_string()), "/");
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    let probe = http_probe(IntOrString::String("metrics".to_owned()), "/");
    let outcome = probe_http(server.port, &probe).await;
    assert!(matches!(&outcome, ProbeOutcome::Unknown(m) if m.contains("\"metrics\"")), "{outcome:?}");
    let probe = http_probe(IntOrString::Int(70000), "/");
    assert!(matches!(probe_http(server.port, &probe).await, ProbeOutcome::Unknown(_)));
}

#[tokio::test]
async fn http_without_host_or_pod_ip_is_unknown() {
    let probe = http_probe(IntOrString::Int(80), "/");
    let target = HandlerTarget { container_id: "c1".to_owned(), ..HandlerTarget::default() };
    let outcome = run_probe(&probe, &target, &*FakeExec::new()).await;
    assert!(matches!(&outcome, ProbeOutcome::Unknown(m) if m.contains("no IP")), "{outcome:?}");
}

#[tokio::test]
async fn http_follows_redirects_on_the_same_host() {
    let server = TestServer::http(|seen| match seen.path.as_str() {
        "/old" => Answer::redirect("/login?next=http://elsewhere/"),
        "/login?next=http://elsewhere/" => Answer::redirect("/new/place"),
        "/new/place" => Answer::redirect("final"),
        "/new/final" => Answer::status(503),
        _ => Answer::status(404),
    })
    .await;
    let probe = http_probe(IntOrString::Int(server.port.into()), "/old");
    assert_eq!(
        probe_http(server.port, &probe).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 503".to_owned())
    );
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/old", "/login?next=http://elsewhere/", "/new/place", "/new/final"]);
}

#[tokio::test]
async fn http_follows_absolute_redirects_to_other_ports_and_schemes_of_the_same_host() {
    let plain = TestServer::http(|_| Answer::status(200)).await;
    let secure = TestServer::https(|_| Answer::status(204)).await;
    for (scheme, to) in [("http", &plain), ("https", &secure)] {
        let location = format!("{scheme}://127.0.0.1:{}/{scheme}", to.port);
        let server = TestServer::http(move |_| Answer::redirect(&location)).await;
        let probe = http_probe(IntOrString::Int(server.port.into()), "/");
        assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
        assert_eq!(to.seen()[0].path, format!("/{scheme}"));
    }
}

#[tokio::test]
async fn http_redirect_to_another_host_is_not_followed_and_counts_as_success() {
    // "localhost" is another host name than 127.0.0.1, and nothing listens there.
    let port = closed_port().await;
    let location = format!("http://localhost:{port}/");
    let server = TestServer::http(move |_| Answer::redirect(&location)).await;
    let probe = http_probe(IntOrString::Int(server.port.into()), "/");
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn http_redirect_loop_fails_after_ten() {
    let server = TestServer::http(|_| Answer::redirect("/again")).await;
    let probe = http_probe(IntOrString::Int(server.port.into()), "/");
    let outcome = probe_http(server.port, &probe).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(m) if m.contains("stopped after 10 redirects")), "{outcome:?}");
    assert_eq!(server.seen().len(), 11);
}

#[tokio::test]
async fn http_server_that_never_answers_times_out() {
    let server = TestServer::http(|_| Answer::Hang).await;
    let mut probe = http_probe(IntOrString::Int(server.port.into()), "/");
    probe.timeout_seconds = Some(1);
    let start = Instant::now();
    let outcome = probe_http(server.port, &probe).await;
    let took = start.elapsed();
    assert!(matches!(&outcome, ProbeOutcome::Failure(m) if m.contains("timed out after 1s")), "{outcome:?}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn http_large_body_is_read_bounded() {
    let server =
        TestServer::http(|_| Answer::Reply { status: 200, headers: Vec::new(), body: vec![b'x'; 4 << 20] }).await;
    let probe = http_probe(IntOrString::Int(server.port.into()), "/");
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    let request = ProbeRequest::from_action(probe.http_get.as_ref().unwrap(), &target(80)).unwrap();
    assert_eq!(http::get(&request).await.unwrap().body.len(), 10 * 1024);
}

#[tokio::test]
async fn http_connection_refused_fails() {
    let port = closed_port().await;
    let probe = http_probe(IntOrString::Int(port.into()), "/x");
    let outcome = probe_http(port, &probe).await;
    let expected = format!("Get \"http://127.0.0.1:{port}/x\": dial tcp 127.0.0.1:{port}: ");
    assert!(
        matches!(&outcome, ProbeOutcome::Failure(m) if m.starts_with(&expected) && m.contains("refused")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn https_skips_certificate_verification() {
    let server =
        TestServer::https(|seen| if seen.path == "/secure" { Answer::status(200) } else { Answer::status(500) }).await;
    let mut probe = http_probe(IntOrString::Int(server.port.into()), "/secure");
    probe.http_get.as_mut().unwrap().scheme = Some("HTTPS".to_owned());
    assert_eq!(probe_http(server.port, &probe).await, ProbeOutcome::Success);
    probe.http_get.as_mut().unwrap().path = Some("/other".to_owned());
    assert_eq!(
        probe_http(server.port, &probe).await,
        ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".to_owned())
    );
}

#[tokio::test]
async fn tcp_connects_or_fails() {
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let open = listener.local_addr().unwrap().port();
    let mut probe = Probe {
        tcp_socket: Some(TCPSocketAction { host: None, port: IntOrString::String("http".to_owned()) }),
        ..Probe::default()
    };
    assert_eq!(probe_http(open, &probe).await, ProbeOutcome::Success);
    let closed = closed_port().await;
    probe.tcp_socket.as_mut().unwrap().port = IntOrString::Int(closed.into());
    probe.tcp_socket.as_mut().unwrap().host = Some("127.0.0.1".to_owned());
    let outcome = run_probe(&probe, &HandlerTarget::default(), &*FakeExec::new()).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failure(m) if m.starts_with(&format!("dial tcp 127.0.0.1:{closed}: "))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn exec_exit_codes_output_and_errors() {
    let exec = FakeExec::new();
    exec.script(
        "check",
        &[Step::Exit(0, ""), Step::Exit(1, "not yet\n"), Step::Exit(2, ""), Step::Error("container not found")],
        Step::Exit(0, ""),
    );
    let probe = exec_probe("check");
    let target = target(80);
    assert_eq!(run_probe(&probe, &target, &*exec).await, ProbeOutcome::Success);
    assert_eq!(run_probe(&probe, &target, &*exec).await, ProbeOutcome::Failure("not yet".to_owned()));
    assert_eq!(
        run_probe(&probe, &target, &*exec).await,
        ProbeOutcome::Failure("command [\"check\", \"arg\"] exited with code 2".to_owned())
    );
    assert!(matches!(
        run_probe(&probe, &target, &*exec).await,
        ProbeOutcome::Unknown(m) if m.contains("container not found")
    ));
    let call = &exec.calls()[0];
    assert_eq!(call.container_id, "c1");
    assert_eq!(call.command, ["check", "arg"]);
    assert_eq!(call.timeout, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn exec_that_hangs_times_out() {
    let exec = FakeExec::new();
    exec.script("slow", &[], Step::Hang);
    let mut probe = exec_probe("slow");
    probe.timeout_seconds = Some(5);
    let start = Instant::now();
    let outcome = run_probe(&probe, &target(80), &*exec).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(outcome, ProbeOutcome::Failure("command [\"slow\", \"arg\"] timed out after 5s".to_owned()));
}

#[tokio::test]
async fn empty_probes_and_grpc_without_pod_ip_are_unknown() {
    let outcome = run_probe(&Probe::default(), &target(80), &*FakeExec::new()).await;
    assert!(matches!(outcome, ProbeOutcome::Unknown(_)));
    let probe = Probe { grpc: Some(GRPCAction { port: 9000, service: None }), ..Probe::default() };
    let outcome = run_probe(&probe, &HandlerTarget::default(), &*FakeExec::new()).await;
    assert!(matches!(&outcome, ProbeOutcome::Unknown(m) if m.contains("no IP")), "{outcome:?}");
}
