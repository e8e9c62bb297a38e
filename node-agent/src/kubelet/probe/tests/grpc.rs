//! gRPC probes against a small HTTP/2 server on 127.0.0.1 speaking the health protocol.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{GRPCAction, Probe};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::support::{FakeExec, LOCALHOST, closed_port, target};
use crate::kubelet::probe::grpc::{HEALTH_CHECK_PATH, decode_request_service, decode_response, frame};
use crate::kubelet::probe::{ProbeOutcome, run_probe};

#[derive(Debug, Clone, Copy)]
enum Health {
    /// A HealthCheckResponse with this status, then grpc-status 0.
    Status(u8),
    /// A trailers-only answer with this gRPC status code.
    Error(u32),
    Hang,
}

struct GrpcServer {
    port: u16,
    services: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

impl GrpcServer {
    async fn start(health: Health) -> Self {
        let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let services = Arc::new(Mutex::new(Vec::new()));
        let seen = services.clone();
        let task = tokio::spawn(async move {
            // Bounded by the test: aborted when the server is dropped.
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = service_fn(move |request| answer(request, health, seen.clone()));
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { port, services, task }
    }

    fn services(&self) -> Vec<String> {
        self.services.lock().unwrap().clone()
    }
}

async fn answer(
    request: Request<Incoming>,
    health: Health,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<Reply, Infallible> {
    let known_path = request.uri().path() == HEALTH_CHECK_PATH;
    let body = request.into_body().collect().await.unwrap().to_bytes();
    seen.lock().unwrap().push(decode_request_service(&body).unwrap());
    let health = if known_path { health } else { Health::Error(12) };
    let response = Response::builder().header("content-type", "application/grpc");
    Ok(match health {
        Health::Status(status) => {
            let trailers = async {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(trailers))
            };
            let body = Full::new(frame(&[0x08, status])).with_trailers(trailers);
            response.body(body.boxed()).unwrap()
        }
        Health::Error(code) => response
            .header("grpc-status", code.to_string())
            .header("grpc-message", "as the test wants")
            .body(Empty::new().boxed())
            .unwrap(),
        Health::Hang => std::future::pending().await,
    })
}

fn grpc_probe(port: u16, service: Option<&str>) -> Probe {
    Probe { grpc: Some(GRPCAction { port: i32::from(port), service: service.map(str::to_owned) }), ..Probe::default() }
}

async fn probe(port: u16, service: Option<&str>) -> ProbeOutcome {
    run_probe(&grpc_probe(port, service), &target(80), &*FakeExec::new()).await
}

#[tokio::test]
async fn serving_is_a_success_and_the_service_is_sent() {
    let server = GrpcServer::start(Health::Status(1)).await;
    assert_eq!(probe(server.port, None).await, ProbeOutcome::Success);
    assert_eq!(probe(server.port, Some("liveness")).await, ProbeOutcome::Success);
    assert_eq!(server.services(), ["", "liveness"]);
}

#[tokio::test]
async fn not_serving_fails() {
    let server = GrpcServer::start(Health::Status(2)).await;
    assert_eq!(
        probe(server.port, None).await,
        ProbeOutcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".to_owned())
    );
}

#[tokio::test]
async fn grpc_errors_fail_with_their_meaning() {
    let server = GrpcServer::start(Health::Error(5)).await;
    let outcome = probe(server.port, Some("nope")).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failure(m) if m.contains("no such service") && m.contains("\"nope\"")),
        "{outcome:?}"
    );
    let server = GrpcServer::start(Health::Error(12)).await;
    let outcome = probe(server.port, None).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failure(m) if m.contains("does not implement grpc.health.v1.Health")),
        "{outcome:?}"
    );
    let server = GrpcServer::start(Health::Error(14)).await;
    let outcome = probe(server.port, None).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failure(m) if m.ends_with("rpc error: code = 14 desc = as the test wants")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = GrpcServer::start(Health::Hang).await;
    let outcome = probe(server.port, None).await;
    assert!(matches!(&outcome, ProbeOutcome::Failure(m) if m.ends_with("timed out after 1s")), "{outcome:?}");
}

#[tokio::test]
async fn nothing_listening_fails() {
    let port = closed_port().await;
    let outcome = probe(port, None).await;
    assert!(
        matches!(&outcome, ProbeOutcome::Failure(m) if m.contains(&format!("dial tcp 127.0.0.1:{port}"))),
        "{outcome:?}"
    );
}

#[test]
fn responses_decode_skipping_unknown_fields() {
    // field 2 (string "x"), field 3 (fixed64), then status = 2 (NOT_SERVING).
    let message = [0x12, 0x01, b'x', 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x02];
    assert_eq!(decode_response(&frame(&message)).unwrap(), 2);
    // An empty message is UNKNOWN (0).
    assert_eq!(decode_response(&frame(&[])).unwrap(), 0);
    assert!(decode_response(&frame(&[0x08])).is_err());
    assert!(decode_response(&[0, 0, 0, 0, 9, 0x08]).is_err());
    assert!(decode_response(&[]).is_err());
}
