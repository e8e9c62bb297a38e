//! networking.k8s.io kinds: Ingress, IngressClass and NetworkPolicy, stored and
//! validated as upstream (paths, backends, controllers, CIDRs, enums). Their datapath
//! is later work; nothing here programs anything.

use serde_json::{Value, json};

use super::super::meta::dns_subdomain_error;
use super::super::status::Cause;
use super::checks::{
    default_at, defaulted, forbidden, immutable, ok_if_empty, one_of, required_because, required_str, selector, str_at,
};
use super::{Strategy, drop_status};

const PATH_TYPES: &[&str] = &["Exact", "ImplementationSpecific", "Prefix"];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

fn backend(b: &Value, field: &str, causes: &mut Vec<Cause>) {
    let service = b.get("service").filter(|s| !s.is_null());
    let resource = b.get("resource").filter(|r| !r.is_null());
    match (service, resource) {
        (Some(_), Some(_)) => causes.push(Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: "Invalid value: \"\": cannot set both resource and service backends".into(),
        }),
        (None, None) => causes.push(Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: "Invalid value: \"\": resource or service backend is required".into(),
        }),
        (Some(s), None) => {
            required_str(s, "/name", &format!("{field}.service.name"), causes);
            let number = s.pointer("/port/number").and_then(Value::as_i64);
            let name = s.pointer("/port/name").and_then(Value::as_str).filter(|n| !n.is_empty());
            match (number, name) {
                (Some(_), Some(_)) => causes.push(Cause::invalid(
                    format!("{field}.service.port"),
                    s.get("port").unwrap_or(&Value::Null),
                    "cannot set both port name & port number",
                )),
                (None, None) => causes.push(Cause::required(format!("{field}.service.port.name"))),
                (Some(n), None) if !(1..=65535).contains(&n) => causes.push(Cause::invalid(
                    format!("{field}.service.port.number"),
                    &json!(n),
                    "must be between 1 and 65535, inclusive",
                )),
                _ => {}
            }
        }
        (None, Some(r)) => {
            required_str(r, "/kind", &format!("{field}.resource.kind"), causes);
            required_str(r, "/name", &format!("{field}.resource.name"), causes);
        }
    }
}

#[derive(Debug)]
pub struct Ingress;

impl Strategy for Ingress {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, "/status", json!({"loadBalancer": {}}));
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        let rules = obj.pointer("/spec/rules").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        let default_backend = obj.pointer("/spec/defaultBackend").filter(|b| !b.is_null());
        if rules.is_empty() && default_backend.is_none() {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec".into(),
                message: "Invalid value: []: either `defaultBackend` or `rules` must be specified".into(),
            });
        }
        if let Some(b) = default_backend {
            backend(b, "spec.defaultBackend", causes);
        }
        for (i, rule) in rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            if let Some(host) = str_at(rule, "/host").filter(|h| !h.is_empty()) {
                let bare = host.strip_prefix("*.").unwrap_or(host);
                if let Some(e) = dns_subdomain_error(bare) {
                    causes.push(Cause::invalid(format!("{p}.host"), &json!(host), e));
                }
            }
            let paths = rule.pointer("/http/paths").and_then(Value::as_array);
            if rule.get("http").is_some_and(|h| !h.is_null()) && paths.is_none_or(Vec::is_empty) {
                causes.push(Cause::required(format!("{p}.http.paths")));
            }
            for (j, path) in paths.into_iter().flatten().enumerate() {
                let pp = format!("{p}.http.paths[{j}]");
                let ty = str_at(path, "/pathType").unwrap_or("");
                if ty.is_empty() {
                    causes.push(required_because(format!("{pp}.pathType"), "pathType must be specified"));
                } else if !PATH_TYPES.contains(&ty) {
                    causes.push(Cause::not_supported(format!("{pp}.pathType"), &json!(ty), PATH_TYPES));
                }
                let value = str_at(path, "/path").unwrap_or("");
                if matches!(ty, "Exact" | "Prefix") && !value.starts_with('/') {
                    causes.push(Cause::invalid(format!("{pp}.path"), &json!(value), "must be an absolute path"));
                }
                match path.get("backend") {
                    Some(b) if !b.is_null() => backend(b, &format!("{pp}.backend"), causes),
                    _ => causes.push(Cause::required(format!("{pp}.backend"))),
                }
            }
        }
        for (i, tls) in obj.pointer("/spec/tls").and_then(Value::as_array).into_iter().flatten().enumerate() {
            for (j, host) in tls.get("hosts").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let h = host.as_str().unwrap_or("");
                if let Some(e) = dns_subdomain_error(h.strip_prefix("*.").unwrap_or(h)) {
                    causes.push(Cause::invalid(format!("spec.tls[{i}].hosts[{j}]"), host, e));
                }
            }
        }
        if let Some(c) = str_at(obj, "/spec/ingressClassName")
            && let Some(e) = dns_subdomain_error(c)
        {
            causes.push(Cause::invalid("spec.ingressClassName", &json!(c), e));
        }
    }
}

#[derive(Debug)]
pub struct IngressClass;

impl Strategy for IngressClass {
    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        if required_str(obj, "/spec/controller", "spec.controller", causes) {
            let c = str_at(obj, "/spec/controller").unwrap_or("");
            let domain_ok =
                c.split_once('/').is_some_and(|(d, rest)| dns_subdomain_error(d).is_none() && !rest.is_empty());
            if !domain_ok || c.len() > 250 {
                causes.push(Cause::invalid(
                    "spec.controller",
                    &json!(c),
                    "must be a domain-prefixed path (such as \"acme.io/foo\")",
                ));
            }
        }
        if let Some(p) = obj.pointer("/spec/parameters").filter(|p| !p.is_null()) {
            required_str(p, "/kind", "spec.parameters.kind", causes);
            required_str(p, "/name", "spec.parameters.name", causes);
            one_of(p, "/scope", "spec.parameters.scope", &["Cluster", "Namespace"], causes);
        }
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        let mut causes = Vec::new();
        immutable(cur, new, "/spec/controller", "spec.controller", &mut causes);
        ok_if_empty(causes)
    }
}

fn valid_cidr(s: &str) -> bool {
    s.parse::<ipnet::IpNet>().is_ok()
}

fn peers(rule: &Value, list: &str, field: &str, causes: &mut Vec<Cause>) {
    for (k, peer) in rule.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
        let p = format!("{field}.{list}[{k}]");
        selector(peer, "/podSelector", &format!("{p}.podSelector"), causes);
        selector(peer, "/namespaceSelector", &format!("{p}.namespaceSelector"), causes);
        if let Some(block) = peer.get("ipBlock").filter(|b| !b.is_null()) {
            if peer.get("podSelector").is_some_and(|s| !s.is_null())
                || peer.get("namespaceSelector").is_some_and(|s| !s.is_null())
            {
                causes.push(forbidden(p.clone(), "may not specify more than 1 peer type"));
            }
            let cidr = str_at(block, "/cidr").unwrap_or("");
            if cidr.is_empty() {
                causes.push(Cause::required(format!("{p}.ipBlock.cidr")));
            } else if !valid_cidr(cidr) {
                causes.push(Cause::invalid(
                    format!("{p}.ipBlock.cidr"),
                    &json!(cidr),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                ));
            }
            for (e, ex) in block.get("except").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if !ex.as_str().is_some_and(valid_cidr) {
                    causes.push(Cause::invalid(
                        format!("{p}.ipBlock.except[{e}]"),
                        ex,
                        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                    ));
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct NetworkPolicy;

impl Strategy for NetworkPolicy {
    fn default(&self, obj: &mut Value) {
        if obj.get("spec").is_some_and(Value::is_object) {
            default_at(obj, "/spec/podSelector", json!({}));
        }
        for dir in ["ingress", "egress"] {
            let Some(rules) = obj.pointer_mut(&format!("/spec/{dir}")).and_then(Value::as_array_mut) else {
                continue;
            };
            for rule in rules.iter_mut() {
                for port in rule.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                    default_at(port, "/protocol", json!("TCP"));
                }
            }
        }
        // Upstream: with no policyTypes, Ingress always, Egress when egress rules exist.
        if obj.pointer("/spec/policyTypes").is_none_or(Value::is_null) && obj.get("spec").is_some_and(Value::is_object)
        {
            let mut types = vec!["Ingress"];
            if obj.pointer("/spec/egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty()) {
                types.push("Egress");
            }
            obj["spec"]["policyTypes"] = json!(types);
        }
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        selector(obj, "/spec/podSelector", "spec.podSelector", causes);
        for (i, t) in obj.pointer("/spec/policyTypes").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let t = t.as_str().unwrap_or("");
            if !["Egress", "Ingress"].contains(&t) {
                causes.push(Cause::not_supported(format!("spec.policyTypes[{i}]"), &json!(t), &["Egress", "Ingress"]));
            }
        }
        for (dir, peer_list) in [("ingress", "from"), ("egress", "to")] {
            for (i, rule) in
                obj.pointer(&format!("/spec/{dir}")).and_then(Value::as_array).into_iter().flatten().enumerate()
            {
                let rp = format!("spec.{dir}[{i}]");
                for (j, port) in rule.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    let pp = format!("{rp}.ports[{j}]");
                    one_of(port, "/protocol", &format!("{pp}.protocol"), PROTOCOLS, causes);
                    let number = port.get("port").and_then(Value::as_i64);
                    if let Some(n) = number
                        && !(1..=65535).contains(&n)
                    {
                        causes.push(Cause::invalid(
                            format!("{pp}.port"),
                            &json!(n),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                    if let Some(end) = port.get("endPort").and_then(Value::as_i64) {
                        match number {
                            None => causes.push(required_because(
                                format!("{pp}.port"),
                                "must be specified when endPort is specified",
                            )),
                            Some(n) if end < n => causes.push(Cause::invalid(
                                format!("{pp}.endPort"),
                                &json!(end),
                                "must be greater than or equal to `port`",
                            )),
                            _ => {}
                        }
                    }
                }
                peers(rule, peer_list, &rp, causes);
            }
        }
    }
}
