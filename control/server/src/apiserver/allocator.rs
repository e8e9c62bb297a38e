//! ClusterIP and NodePort allocation for Services, done synchronously at create time
//! (as the real API server's registry does), so a Service never exists without its IP.
//!
//! Pure functions over "what is in use"; the caller serialises allocations (one lock)
//! and derives the used set from the stored Services (`service_ips` keeps it from the
//! store's watch). It must not write anything.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use serde_json::{Value, json};

use super::status::Cause;

/// The default NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The ClusterIP and NodePorts one stored Service holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub ip: Option<Ipv4Addr>,
    pub node_ports: Vec<u16>,
}

impl Held {
    pub fn of(svc: &Value) -> Self {
        let ip = svc.pointer("/spec/clusterIP").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
        let health = svc.pointer("/spec/healthCheckNodePort").and_then(|n| n.as_u64());
        let node_ports = (svc.pointer("/spec/ports").and_then(|p| p.as_array()).into_iter().flatten())
            .filter_map(|p| p.get("nodePort").and_then(|n| n.as_u64()))
            .chain(health)
            .filter_map(|n| u16::try_from(n).ok())
            .collect();
        Self { ip, node_ports }
    }
}

/// The ClusterIPs and NodePorts that stored Services hold, counted (two Services may
/// hold the same NodePort if a client set it by an update), so that removing one
/// Service frees only what no other still holds.
#[derive(Debug, Default)]
pub struct InUse {
    ips: HashMap<Ipv4Addr, u32>,
    node_ports: HashMap<u16, u32>,
}

impl InUse {
    pub fn add(&mut self, svc: &Value) {
        self.hold(&Held::of(svc));
    }

    pub fn hold(&mut self, held: &Held) {
        if let Some(ip) = held.ip {
            *self.ips.entry(ip).or_default() += 1;
        }
        for &p in &held.node_ports {
            *self.node_ports.entry(p).or_default() += 1;
        }
    }

    pub fn release(&mut self, held: &Held) {
        fn dec<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K) {
            if let Some(n) = m.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&k);
                }
            }
        }
        if let Some(ip) = held.ip {
            dec(&mut self.ips, ip);
        }
        for &p in &held.node_ports {
            dec(&mut self.node_ports, p);
        }
    }

    pub fn ip_taken(&self, ip: &Ipv4Addr) -> bool {
        self.ips.contains_key(ip)
    }

    pub fn node_port_taken(&self, port: u16) -> bool {
        self.node_ports.contains_key(&port)
    }
}

/// Fills `spec.clusterIP(s)` and node ports of a new Service, or explains why not.
pub fn allocate(cidr: Ipv4Net, used: &InUse, svc: &mut Value) -> Result<(), Vec<Cause>> {
    let ty = svc.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let requested = svc.pointer("/spec/clusterIP").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let ip = match requested.as_str() {
        "None" => None,
        "" => {
            // Offset scan from .2 upward: .1 is the `kubernetes` Service's.
            let found = cidr.hosts().skip(1).find(|ip| !used.ip_taken(ip));
            match found {
                Some(ip) => Some(ip),
                None => {
                    return Err(vec![Cause::invalid(
                        "spec.clusterIPs",
                        &json!([]),
                        "failed to allocate IP: range is full",
                    )]);
                }
            }
        }
        s => {
            let v = json!(s);
            let ip: Ipv4Addr =
                s.parse().map_err(|_| vec![Cause::invalid("spec.clusterIPs[0]", &v, "must be a valid IP address")])?;
            if !cidr.contains(&ip) {
                return Err(vec![Cause::invalid(
                    "spec.clusterIPs[0]",
                    &v,
                    format!("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}"),
                )]);
            }
            if used.ip_taken(&ip) {
                return Err(vec![Cause::invalid(
                    "spec.clusterIPs[0]",
                    &v,
                    format!("failed to allocate IP {ip}: provided IP is already allocated"),
                )]);
            }
            Some(ip)
        }
    };
    let spec = svc["spec"].as_object_mut().expect("validated Service has a spec");
    match ip {
        Some(ip) => {
            spec.insert("clusterIP".into(), json!(ip.to_string()));
            spec.insert("clusterIPs".into(), json!([ip.to_string()]));
        }
        None => {
            spec.insert("clusterIPs".into(), json!(["None"]));
        }
    }
    spec.insert("ipFamilies".into(), json!(["IPv4"]));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    spec.entry("internalTrafficPolicy").or_insert(json!("Cluster"));
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.entry("externalTrafficPolicy").or_insert(json!("Cluster"));
        // The ports this request takes, beside those stored Services hold.
        let mut taken = HashSet::new();
        let mut causes = Vec::new();
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            // Ports the client chose are reserved first, so automatic picks avoid them.
            for (i, p) in ports.iter().enumerate() {
                if let Some(n) = p.get("nodePort").and_then(|n| n.as_u64()) {
                    let v = json!(n);
                    if n > u16::MAX as u64 || !NODE_PORTS.contains(&(n as u16)) {
                        causes.push(Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &v,
                            "provided port is not in the valid range. The range of valid ports is 30000-32767",
                        ));
                    } else if used.node_port_taken(n as u16) || !taken.insert(n as u16) {
                        causes.push(Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &v,
                            "provided port is already allocated",
                        ));
                    }
                }
            }
            for (i, p) in ports.iter_mut().enumerate().filter(|(_, p)| p.get("nodePort").is_none()) {
                match NODE_PORTS.clone().find(|n| !taken.contains(n) && !used.node_port_taken(*n)) {
                    Some(n) => {
                        taken.insert(n);
                        p["nodePort"] = json!(n);
                    }
                    None => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &Value::Null,
                        "node port range is full",
                    )),
                }
            }
        }
        let local = spec.get("externalTrafficPolicy").and_then(|p| p.as_str()) == Some("Local");
        if ty == "LoadBalancer" && local {
            allocate_health_check_port(spec, used, &mut taken, &mut causes);
        }
        if !causes.is_empty() {
            return Err(causes);
        }
    }
    Ok(())
}

/// `spec.healthCheckNodePort` of a LoadBalancer Service with `externalTrafficPolicy:
/// Local`: the client's if free and in range, else the first free node port. Nodes
/// answer on it how many of the Service's endpoints they hold.
fn allocate_health_check_port(
    spec: &mut serde_json::Map<String, Value>,
    used: &InUse,
    taken: &mut HashSet<u16>,
    causes: &mut Vec<Cause>,
) {
    const FIELD: &str = "spec.healthCheckNodePort";
    match spec.get("healthCheckNodePort").and_then(|n| n.as_u64()).filter(|n| *n != 0) {
        Some(n) => {
            let v = json!(n);
            if n > u16::MAX as u64 || !NODE_PORTS.contains(&(n as u16)) {
                causes.push(Cause::invalid(
                    FIELD,
                    &v,
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            } else if used.node_port_taken(n as u16) || !taken.insert(n as u16) {
                causes.push(Cause::invalid(FIELD, &v, "provided port is already allocated"));
            }
        }
        None => match NODE_PORTS.clone().find(|n| !taken.contains(n) && !used.node_port_taken(*n)) {
            Some(n) => {
                taken.insert(n);
                spec.insert("healthCheckNodePort".into(), json!(n));
            }
            None => causes.push(Cause::invalid(FIELD, &Value::Null, "node port range is full")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_cluster_ips_and_node_ports() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let mut used = InUse::default();
        let mut a = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        allocate(cidr, &used, &mut a).unwrap();
        assert_eq!(a["spec"]["clusterIP"], "10.96.0.2");
        used.add(&a);
        let mut b = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30000}]}});
        allocate(cidr, &used, &mut b).unwrap();
        assert_eq!(b["spec"]["clusterIP"], "10.96.0.3");
        assert_eq!(b["spec"]["ports"][0]["nodePort"], 30001);
        used.add(&b);
        let mut dup = json!({"spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 80}]}});
        assert!(allocate(cidr, &used, &mut dup).is_err());
        let mut out = json!({"spec": {"clusterIP": "192.168.0.1", "ports": [{"port": 80}]}});
        assert!(allocate(cidr, &used, &mut out).is_err());
        let mut np = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}});
        assert!(allocate(cidr, &used, &mut np).is_err());
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        allocate(cidr, &used, &mut headless).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        // Releasing `a` frees its IP for the next automatic pick.
        used.release(&Held::of(&a));
        let mut c = json!({"spec": {"ports": [{"port": 80}]}});
        allocate(cidr, &used, &mut c).unwrap();
        assert_eq!(c["spec"]["clusterIP"], "10.96.0.2");
    }

    #[test]
    fn load_balancer_with_local_traffic_gets_a_health_check_port() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let mut used = InUse::default();
        let mut lb =
            json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]}});
        allocate(cidr, &used, &mut lb).unwrap();
        let health = lb.pointer("/spec/healthCheckNodePort").and_then(|p| p.as_u64()).unwrap();
        assert_ne!(Some(health), lb.pointer("/spec/ports/0/nodePort").and_then(|p| p.as_u64()));
        used.add(&lb);
        assert!(used.node_port_taken(health as u16));
        let mut clash = json!({"spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": health, "ports": [{"port": 80}]}});
        assert!(allocate(cidr, &used, &mut clash).is_err());
        let mut cluster = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
        allocate(cidr, &used, &mut cluster).unwrap();
        assert!(cluster.pointer("/spec/healthCheckNodePort").is_none());
    }

    #[test]
    fn a_node_port_held_twice_stays_taken_until_both_release_it() {
        let mut used = InUse::default();
        let held = Held { ip: None, node_ports: vec![30005] };
        used.hold(&held);
        used.hold(&held);
        used.release(&held);
        assert!(used.node_port_taken(30005));
        used.release(&held);
        assert!(!used.node_port_taken(30005));
    }
}
