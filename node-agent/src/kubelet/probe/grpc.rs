//! gRPC probes: one call of the standard health service (`grpc.health.v1.Health/Check`)
//! over plaintext HTTP/2 to the pod IP, as upstream (no TLS, no host field). SERVING is
//! a success; any other answer, gRPC error or timeout is a failure.
//!
//! The two messages involved have one field each, so they are encoded and decoded here
//! by hand rather than by generated code. It must not keep the connection: each attempt
//! dials anew.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::Request;
use http::header::{self, HeaderMap};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::GRPCAction;
use tokio::net::TcpStream;

use super::http::{USER_AGENT, drive, join_host_port, read_body};
use super::target::HandlerTarget;
use super::{Error, ProbeOutcome, Result};

/// The health service's method, as an HTTP/2 path.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// gRPC status codes the messages name.
const GRPC_NOT_FOUND: u32 = 5;
const GRPC_UNIMPLEMENTED: u32 = 12;

/// `HealthCheckResponse.ServingStatus`.
const SERVING: u64 = 1;

/// Calls the health service of `target`'s pod IP within `timeout`.
pub async fn run_grpc(action: &GRPCAction, target: &HandlerTarget, timeout: Duration) -> ProbeOutcome {
    let (host, port) = match target.host(None).and_then(|host| {
        let port = u16::try_from(action.port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or(Error::PortOutOfRange { port: i64::from(action.port) })?;
        Ok((host, port))
    }) {
        Ok(address) => address,
        Err(error) => return ProbeOutcome::Unknown(error.to_string()),
    };
    let service = action.service.as_deref().unwrap_or_default();
    let what = format!("gRPC health check of {} (service {service:?})", join_host_port(&host, port));
    match tokio::time::timeout(timeout, check(&host, port, service)).await {
        Ok(Ok(SERVING)) => ProbeOutcome::Success,
        Ok(Ok(status)) => {
            ProbeOutcome::Failure(format!("service unhealthy (responded with {:?})", status_name(status)))
        }
        Ok(Err(Error::GrpcStatus { code, message })) if code == GRPC_UNIMPLEMENTED => {
            ProbeOutcome::Failure(format!("{what}: the server does not implement grpc.health.v1.Health: {message}"))
        }
        Ok(Err(Error::GrpcStatus { code, .. })) if code == GRPC_NOT_FOUND => {
            ProbeOutcome::Failure(format!("{what}: the server knows no such service"))
        }
        Ok(Err(error)) => ProbeOutcome::Failure(format!("{what}: {error}")),
        Err(_) => ProbeOutcome::Failure(format!("{what}: {}", Error::Timeout(timeout))),
    }
}

/// One Check call; the serving status it answered.
async fn check(host: &str, port: u16, service: &str) -> Result<u64> {
    let addr = join_host_port(host, port);
    let tcp = TcpStream::connect((host, port)).await.map_err(|source| Error::Connect { addr: addr.clone(), source })?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.map_err(Error::Http)?;
    let request = Request::post(format!("http://{addr}{HEALTH_CHECK_PATH}"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, USER_AGENT)
        .body(Full::new(encode_request(service)))
        .map_err(Error::InvalidRequest)?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(Error::Http)?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Error::GrpcResponse(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only answer carries its status in the headers.
        grpc_status(&parts.headers)?;
        let (data, trailers) = read_body(body).await?;
        if let Some(trailers) = &trailers {
            grpc_status(trailers)?;
        }
        decode_response(&data)
    };
    drive(conn, exchange).await
}

/// A non-OK `grpc-status` as an error.
fn grpc_status(headers: &HeaderMap) -> Result<()> {
    let Some(code) = headers.get("grpc-status") else {
        return Ok(());
    };
    let code: u32 = code
        .to_str()
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::GrpcResponse(format!("bad grpc-status {code:?}")))?;
    if code == 0 {
        return Ok(());
    }
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default().to_owned();
    Err(Error::GrpcStatus { code, message })
}

/// A length-prefixed `HealthCheckRequest { service = 1 }`.
pub fn encode_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    frame(&message)
}

/// A gRPC message frame: not compressed, big-endian length, the message.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The `status` (field 1) of a framed `HealthCheckResponse`; absent means 0 (UNKNOWN).
pub fn decode_response(data: &[u8]) -> Result<u64> {
    let bad = |why: &str| Error::GrpcResponse(why.to_owned());
    let (header, rest) = data.split_at_checked(5).ok_or_else(|| bad("no response message"))?;
    if header[0] != 0 {
        return Err(bad("compressed response"));
    }
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut message = rest.get(..length).ok_or_else(|| bad("truncated response"))?;
    let mut status = 0;
    while !message.is_empty() {
        let key = take_varint(&mut message).ok_or_else(|| bad("bad field key"))?;
        let skip = match key & 7 {
            0 => {
                let value = take_varint(&mut message).ok_or_else(|| bad("bad varint"))?;
                if key >> 3 == 1 {
                    status = value;
                }
                0
            }
            1 => 8,
            2 => usize::try_from(take_varint(&mut message).ok_or_else(|| bad("bad length"))?)
                .map_err(|_| bad("bad length"))?,
            5 => 4,
            _ => return Err(bad("unknown wire type")),
        };
        message = message.get(skip..).ok_or_else(|| bad("truncated field"))?;
    }
    Ok(status)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => other.to_string(),
    }
}

/// For the tests' server: the `service` of a framed request.
#[cfg(test)]
pub fn decode_request_service(data: &[u8]) -> Option<String> {
    let mut message = data.get(5..)?;
    if message.is_empty() {
        return Some(String::new());
    }
    let key = take_varint(&mut message)?;
    let length = usize::try_from(take_varint(&mut message)?).ok()?;
    let bytes = message.get(..length).filter(|_| key == 0x0a)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}
