//! The kubelet server's `StreamingRuntime` over the agent's CRI client: CRI `Exec` and
//! `Attach` hand out a URL on containerd's streaming server for one session; the
//! verbose `PodSandboxStatus` says where a sandbox's network namespace is.
//!
//! It must not do anything but translate the request.

use std::path::PathBuf;

use super::{AttachRequest, BoxError, BoxFuture, ExecRequest, StreamingRuntime};
use crate::cri::{CriClient, api};

impl StreamingRuntime for CriClient {
    fn exec(&self, req: ExecRequest) -> BoxFuture<'_, Result<String, BoxError>> {
        Box::pin(async move {
            let ExecRequest { container_id, cmd, tty, stdin, stdout, stderr } = req;
            Ok(CriClient::exec(self, api::ExecRequest { container_id, cmd, tty, stdin, stdout, stderr }).await?)
        })
    }

    fn attach(&self, req: AttachRequest) -> BoxFuture<'_, Result<String, BoxError>> {
        Box::pin(async move {
            let AttachRequest { container_id, tty, stdin, stdout, stderr } = req;
            Ok(CriClient::attach(self, api::AttachRequest { container_id, tty, stdin, stdout, stderr }).await?)
        })
    }

    fn sandbox_netns(&self, sandbox_id: &str) -> BoxFuture<'_, Result<Option<PathBuf>, BoxError>> {
        let id = sandbox_id.to_string();
        Box::pin(async move {
            let info = self.pod_sandbox_info(&id).await?;
            let Some(info) = info.get("info") else { return Ok(None) };
            Ok(netns_of(&serde_json::from_str(info)?))
        })
    }
}

/// The network namespace in containerd's sandbox info: the one its runtime spec names
/// (`/var/run/netns/cni-…`), else (a pod on the node's network has none there) the
/// pause process's.
fn netns_of(info: &serde_json::Value) -> Option<PathBuf> {
    let named = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|nss| nss.iter().find(|ns| ns["type"] == "network"))
        .and_then(|ns| ns["path"].as_str())
        .filter(|p| !p.is_empty());
    match named {
        Some(path) => Some(PathBuf::from(path)),
        None => info["pid"].as_u64().filter(|&p| p != 0).map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_comes_from_the_spec_else_the_pause_pid() {
        let own = serde_json::json!({"pid": 42, "runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}});
        assert_eq!(netns_of(&own), Some(PathBuf::from("/var/run/netns/cni-1")));
        let host = serde_json::json!({"pid": 42, "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}]}}});
        assert_eq!(netns_of(&host), Some(PathBuf::from("/proc/42/ns/net")));
        assert_eq!(netns_of(&serde_json::json!({"pid": 0})), None);
    }
}
