//! Exec probes and hooks through the node's CRI client (ExecSync).

use std::time::Duration;

use super::handler::{ExecOutput, ExecRunner};
use crate::cri::CriClient;

impl ExecRunner for CriClient {
    async fn exec_sync(&self, container_id: &str, cmd: Vec<String>, timeout: Duration) -> Result<ExecOutput, String> {
        let response =
            CriClient::exec_sync(self, container_id, cmd, timeout).await.map_err(|error| error.to_string())?;
        Ok(ExecOutput { exit_code: response.exit_code, stdout: response.stdout, stderr: response.stderr })
    }
}
