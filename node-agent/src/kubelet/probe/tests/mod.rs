//! Tests of the probe module: real sockets on 127.0.0.1 only, a fake ExecRunner, and
//! paused tokio time wherever only timers matter.

mod grpc;
mod handlers;
mod lifecycle;
mod support;
mod workers;
