//! What every handler runs against: the container ([`HandlerTarget`]: its id for exec,
//! the pod IP as the default host, its ports for named ports), and how much of an
//! answer a handler keeps ([`MAX_OUTPUT`]). Shared by the handlers (`handler`, `http`,
//! `grpc`) and by those that build targets (`manager`, `lifecycle`), it imports none of
//! them.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, ContainerPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Error, Result};

/// The most output of a command, or body of a response, kept for a message.
pub const MAX_OUTPUT: usize = 10 * 1024;

/// The container a handler runs against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandlerTarget {
    /// The CRI container id exec handlers run in.
    pub container_id: String,
    /// The host of httpGet and tcpSocket handlers that name none (for hostNetwork pods
    /// the pod IP is the node's).
    pub pod_ip: Option<IpAddr>,
    /// The container's ports, against which named ports resolve.
    pub ports: Vec<ContainerPort>,
}

impl HandlerTarget {
    pub fn new(container_id: &str, pod_ip: Option<IpAddr>, container: &Container) -> Self {
        Self { container_id: container_id.to_owned(), pod_ip, ports: container.ports.clone().unwrap_or_default() }
    }

    /// The explicit host of a handler, else the pod IP.
    pub(super) fn host(&self, explicit: Option<&String>) -> Result<String> {
        match explicit.filter(|host| !host.is_empty()) {
            Some(host) => Ok(host.clone()),
            None => self.pod_ip.map(|ip| ip.to_string()).ok_or(Error::NoHost),
        }
    }

    /// A port number, or the name of one of the container's ports (a number written as
    /// a string is accepted too, as upstream does).
    pub(super) fn resolve_port(&self, port: &IntOrString) -> Result<u16> {
        let number = match port {
            IntOrString::Int(number) => i64::from(*number),
            IntOrString::String(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| i64::from(p.container_port))
                .or_else(|| name.parse::<i64>().ok())
                .ok_or_else(|| Error::PortNotFound { port: name.clone() })?,
        };
        u16::try_from(number).ok().filter(|n| *n != 0).ok_or(Error::PortOutOfRange { port: number })
    }
}
