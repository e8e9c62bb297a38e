//! The kubelet server's `StreamingRuntime` over the agent's CRI client: CRI `Exec`
//! hands out a URL on containerd's streaming server for one session.
//!
//! It must not do anything but translate the request.

use super::{BoxError, BoxFuture, ExecRequest, StreamingRuntime};
use crate::cri::{CriClient, api};

impl StreamingRuntime for CriClient {
    fn exec(&self, req: ExecRequest) -> BoxFuture<'_, Result<String, BoxError>> {
        Box::pin(async move {
            let req = api::ExecRequest {
                container_id: req.container_id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            };
            Ok(CriClient::exec(self, req).await?)
        })
    }
}
