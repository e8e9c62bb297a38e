//! A container's environment as the CRI wants it: `env` (with `$(VAR)` expansion),
//! `valueFrom` (ConfigMap and Secret keys, the downward API's fieldRef and
//! resourceFieldRef), `envFrom`, and the Service variables (`<SVC>_SERVICE_HOST`, the
//! Docker-link style `<SVC>_PORT_...`) a pod gets unless `enableServiceLinks: false`.
//!
//! The downward API's field and resource lookups are here too (`field_value`,
//! `resource_value`), shared with the downwardAPI volumes. Errors say what was missing
//! in upstream's words (`configmap "x" not found`), for the kubelet to report as
//! CreateContainerConfigError. This module must not talk to the API server other than
//! through [`ObjectLookup`], nor touch the CRI.

use std::collections::{BTreeMap, HashMap};

use k8s_cri::v1::KeyValue;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_api::quantity::{self, QuantityError};

use super::lookup::{LookupError, ObjectLookup};

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyMissing { key: String, namespace: String, name: String },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyMissing { key: String, namespace: String, name: String },
    #[error("env var {var}: unsupported fieldRef fieldPath {path:?}")]
    UnsupportedField { var: String, path: String },
    /// `what` says where: `env var X` or `volume "v" item "path"`.
    #[error("{what}: unsupported resourceFieldRef resource {resource:?}")]
    UnsupportedResource { what: String, resource: String },
    #[error("{what}: no container named {container:?} in the pod")]
    NoSuchContainer { what: String, container: String },
    #[error("{what}: {source}")]
    Quantity {
        what: String,
        #[source]
        source: QuantityError,
    },
    #[error("{what}: the divisor {divisor:?} is zero")]
    ZeroDivisor { what: String, divisor: String },
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

pub type Result<T, E = EnvError> = std::result::Result<T, E>;

/// What the environment (and downwardAPI volumes) need beyond the pod itself.
#[derive(Debug, Clone, Default)]
pub struct EnvContext {
    pub node_name: String,
    /// The node's address (`status.hostIP`).
    pub host_ip: String,
    /// The pod's addresses, primary first (the node's for a hostNetwork pod).
    pub pod_ips: Vec<String>,
    /// The node's allocatable resources: a container's unset limit reads as these.
    pub node_allocatable: BTreeMap<String, Quantity>,
    /// Services for the Service variables: those of the pod's namespace and
    /// `default/kubernetes` (the caller may pass more; others are ignored).
    pub services: Vec<Service>,
}

/// The container's environment, in a stable order: `envFrom` sources, then `env` in
/// order (a later name replaces an earlier one in place), then Service variables not
/// already set.
pub async fn container_env<L: ObjectLookup>(
    pod: &Pod,
    container: &Container,
    ctx: &EnvContext,
    lookup: &L,
) -> Result<Vec<KeyValue>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let spec = pod.spec.as_ref();
    let links = spec.and_then(|s| s.enable_service_links).unwrap_or(true);
    let service_env = service_env(&ctx.services, ns, links);
    let mut env = OrderedEnv::default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        // Each source is a ConfigMap or a Secret: its string values, or why not.
        let (found, optional, missing) = if let Some(r) = &from.config_map_ref {
            let vars = lookup
                .config_map(ns, &r.name)
                .await?
                .map(|cm| config_map_strings(&cm).map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>());
            (vars, r.optional, EnvError::ConfigMapNotFound(r.name.clone()))
        } else if let Some(r) = &from.secret_ref {
            let vars = lookup
                .secret(ns, &r.name)
                .await?
                .map(|s| secret_strings(&s).map(|(k, v)| (k.to_string(), v)).collect::<Vec<_>>());
            (vars, r.optional, EnvError::SecretNotFound(r.name.clone()))
        } else {
            continue;
        };
        match found {
            Some(vars) => env.extend_valid(prefix, vars),
            None if optional == Some(true) => {}
            None => return Err(missing),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, |name| env.get(name).or_else(|| service_env.get(name))),
            (_, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_value(pod, f, ctx)
                        .map_err(|path| EnvError::UnsupportedField { var: var.name.clone(), path })?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(pod, container, r, &ctx.node_allocatable, &format!("env var {}", var.name))?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match key_ref(lookup, ns, false, &r.name, &r.key, optional).await? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match key_ref(lookup, ns, true, &r.name, &r.key, optional).await? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    String::new()
                }
            }
            _ => String::new(),
        };
        env.set(&var.name, value);
    }
    for (k, v) in service_env.entries {
        if env.get(&k).is_none() {
            env.set(&k, v);
        }
    }
    Ok(env.entries.into_iter().map(|(key, value)| KeyValue { key, value }).collect())
}

/// A configMapKeyRef (`secret` false) or secretKeyRef: `None` when it is optional and
/// its object or key is missing.
async fn key_ref<L: ObjectLookup>(
    lookup: &L,
    ns: &str,
    secret: bool,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>> {
    let found = if secret {
        lookup.secret(ns, name).await?.map(|s| secret_strings(&s).find(|(k, _)| *k == key).map(|(_, v)| v))
    } else {
        lookup
            .config_map(ns, name)
            .await?
            .map(|cm| config_map_strings(&cm).find(|(k, _)| *k == key).map(|(_, v)| v.into()))
    };
    let (namespace, name, key) = (ns.to_string(), name.to_string(), key.to_string());
    match found {
        Some(Some(v)) => Ok(Some(v)),
        _ if optional => Ok(None),
        None if secret => Err(EnvError::SecretNotFound(name)),
        None => Err(EnvError::ConfigMapNotFound(name)),
        Some(None) if secret => Err(EnvError::SecretKeyMissing { key, namespace, name }),
        Some(None) => Err(EnvError::ConfigMapKeyMissing { key, namespace, name }),
    }
}

/// Variables in insertion order, with lookup by name; setting a name again replaces
/// its value where it stands.
#[derive(Debug, Default)]
struct OrderedEnv {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl OrderedEnv {
    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.entries[i].1.as_str())
    }

    fn set(&mut self, name: &str, value: String) {
        match self.index.get(name) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(name.to_string(), self.entries.len());
                self.entries.push((name.to_string(), value));
            }
        }
    }

    /// `envFrom`: keys that are not valid variable names once prefixed are skipped,
    /// as upstream does (it reports them in an event; here they are logged).
    fn extend_valid(&mut self, prefix: &str, vars: Vec<(String, String)>) {
        for (k, v) in vars {
            let name = format!("{prefix}{k}");
            if is_env_var_name(&name) {
                self.set(&name, v);
            } else {
                tracing::info!(key = %name, "envFrom: skipping a key that is not a valid environment variable name");
            }
        }
    }
}

fn config_map_strings(cm: &ConfigMap) -> impl Iterator<Item = (&str, &str)> {
    cm.data.iter().flatten().map(|(k, v)| (k.as_str(), v.as_str()))
}

fn secret_strings(s: &Secret) -> impl Iterator<Item = (&str, String)> {
    s.data.iter().flatten().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(&v.0).into_owned()))
}

/// Upstream's rule for environment variable names: letters, digits, `_`, `-`, `.`,
/// not starting with a digit.
fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `$(VAR)` expansion as Kubernetes does it: a known variable is replaced, an unknown
/// one is left as written, `$$` is a literal `$`, and any other `$` stays.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'$' => {
                out.push(b'$');
                i += 2;
            }
            b'(' => match bytes[i + 2..].iter().position(|&b| b == b')') {
                Some(len) => {
                    let name = &input[i + 2..i + 2 + len];
                    match lookup(name) {
                        Some(v) => out.extend_from_slice(v.as_bytes()),
                        None => out.extend_from_slice(&bytes[i..i + 3 + len]),
                    }
                    i += 3 + len;
                }
                // Not closed: `$(` is literal, and scanning goes on after it.
                None => {
                    out.extend_from_slice(b"$(");
                    i += 2;
                }
            },
            _ => {
                out.push(b'$');
                i += 1;
            }
        }
    }
    // Only ASCII bytes were split on, so the output is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// The Service variables upstream injects: each Service with a cluster IP in the pod's
/// namespace (when links are enabled), and `default/kubernetes` always.
fn service_env(services: &[Service], namespace: &str, links: bool) -> OrderedEnv {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for s in services {
        let (Some(name), Some(ns)) = (s.metadata.name.as_deref(), s.metadata.namespace.as_deref()) else {
            continue;
        };
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(s);
        } else if ns == namespace && links {
            chosen.insert(name, s);
        }
    }
    let mut env = OrderedEnv::default();
    for (name, s) in chosen {
        let Some(spec) = &s.spec else { continue };
        let ip = spec.cluster_ip.as_deref().unwrap_or("");
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let prefix = name.to_uppercase().replace('-', "_");
        env.set(&format!("{prefix}_SERVICE_HOST"), ip.to_string());
        env.set(&format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string());
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                env.set(&format!("{prefix}_SERVICE_PORT_{}", pn.to_uppercase().replace('-', "_")), p.port.to_string());
            }
        }
        let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_string() };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                env.set(&format!("{prefix}_PORT"), url.clone());
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            env.set(&format!("{pp}_PROTO"), proto.to_lowercase());
            env.set(&format!("{pp}_PORT"), p.port.to_string());
            env.set(&format!("{pp}_ADDR"), ip.to_string());
            env.set(&pp, url);
        }
    }
    env
}

/// The downward API's `fieldRef`; `Err` carries the path that is not supported.
pub fn field_value(pod: &Pod, sel: &ObjectFieldSelector, ctx: &EnvContext) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let path = sel.field_path.as_str();
    let subscript = |prefix: &str| {
        let rest = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(rest.to_string())
    };
    let map_value = |map: &Option<BTreeMap<String, String>>, key: String| {
        map.as_ref().and_then(|m| m.get(&key)).cloned().unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| ctx.node_name.clone()),
        "spec.serviceAccountName" => {
            spec.and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone())).unwrap_or_default()
        }
        "status.hostIP" => ctx.host_ip.clone(),
        "status.hostIPs" => ctx.host_ip.clone(),
        "status.podIP" => ctx.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => ctx.pod_ips.join(","),
        _ => {
            if let Some(key) = subscript("metadata.labels['") {
                map_value(&m.labels, key)
            } else if let Some(key) = subscript("metadata.annotations['") {
                map_value(&m.annotations, key)
            } else {
                return Err(path.to_string());
            }
        }
    })
}

/// A whole label or annotation map as the downward API writes it: sorted `k="v"`
/// lines, values quoted with Go's escapes.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let lines: Vec<String> = map.into_iter().flatten().map(|(k, v)| format!("{k}={}", go_quote(v))).collect();
    lines.join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The downward API's `resourceFieldRef` for `container` (or the one it names), in
/// units of the divisor, rounded up. An unset limit reads as the node's allocatable,
/// an unset request as the limit (what the API server defaults it to). `what` names
/// the reference in errors.
pub fn resource_value(
    pod: &Pod,
    container: &Container,
    sel: &ResourceFieldSelector,
    node_allocatable: &BTreeMap<String, Quantity>,
    what: &str,
) -> Result<String> {
    let container = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => container,
        Some(name) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .find(|c| c.name == name)
            .ok_or_else(|| EnvError::NoSuchContainer { what: what.into(), container: name.into() })?,
    };
    let unsupported = || EnvError::UnsupportedResource { what: what.into(), resource: sel.resource.clone() };
    let (kind, name) = sel.resource.split_once('.').ok_or_else(unsupported)?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
        return Err(unsupported());
    }
    let res = container.resources.as_ref();
    let limit = res.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(name));
    let request = res.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(name));
    let amount = match kind {
        "limits" => limit.or_else(|| node_allocatable.get(name)),
        "requests" => request.or(limit),
        _ => return Err(unsupported()),
    };
    let bad = |source| EnvError::Quantity { what: what.into(), source };
    let parse = if name == "cpu" { quantity::parse_milli } else { quantity::parse_value };
    let value = amount.map(|q| parse(&q.0)).transpose().map_err(bad)?.unwrap_or(0);
    let divisor = match sel.divisor.as_ref().filter(|d| !d.0.is_empty()) {
        Some(d) => parse(&d.0).map_err(bad)?,
        None => parse("1").map_err(bad)?,
    };
    if divisor <= 0 {
        let divisor = sel.divisor.as_ref().map(|d| d.0.clone()).unwrap_or_default();
        return Err(EnvError::ZeroDivisor { what: what.into(), divisor });
    }
    Ok(value.div_euclid(divisor).saturating_add(i64::from(value.rem_euclid(divisor) != 0)).to_string())
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
