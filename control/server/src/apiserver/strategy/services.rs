//! Services: a ClusterIP (and node ports) allocated at create and kept across updates.

use serde_json::{Value, json};

use super::super::status::Cause;
use super::super::validation;
use super::{Strategy, drop_status};

#[derive(Debug)]
pub struct Service;

impl Strategy for Service {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        keep_allocations(cur, new)
    }

    fn default(&self, obj: &mut Value) {
        validation::default_service(obj);
    }

    fn name_is_label(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        validation::validate_service(obj, causes);
    }

    fn allocates_cluster_ip(&self) -> bool {
        true
    }

    fn delete_returns_object(&self) -> bool {
        true
    }
}

/// A Service keeps its ClusterIP (and node ports a client did not set) across updates;
/// changing the ClusterIP is refused, as in Kubernetes.
fn keep_allocations(cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
    let old_ip = cur.pointer("/spec/clusterIP").cloned().unwrap_or(Value::Null);
    match new.pointer("/spec/clusterIP").and_then(|v| v.as_str()) {
        None | Some("") => {
            if let Some(spec) = new.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.insert("clusterIP".into(), old_ip);
                spec.insert("clusterIPs".into(), cur.pointer("/spec/clusterIPs").cloned().unwrap_or(Value::Null));
            }
        }
        Some(ip) if Some(ip) != old_ip.as_str() => {
            return Err(vec![Cause::invalid("spec.clusterIPs[0]", &json!(ip), "may not change once set")]);
        }
        _ => {}
    }
    // The health-check port stays while the Service still needs one.
    let needs_health = new.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
        && new.pointer("/spec/externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
    let health = if needs_health { &["healthCheckNodePort"][..] } else { &[] };
    if !needs_health && let Some(spec) = new.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.remove("healthCheckNodePort");
    }
    for &k in ["ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy", "clusterIPs"].iter().chain(health) {
        if new.pointer(&format!("/spec/{k}")).is_none_or(Value::is_null)
            && let (Some(v), Some(spec)) =
                (cur.pointer(&format!("/spec/{k}")), new.get_mut("spec").and_then(|s| s.as_object_mut()))
        {
            spec.insert(k.into(), v.clone());
        }
    }
    let old_ports = cur.pointer("/spec/ports").and_then(|p| p.as_array()).cloned().unwrap_or_default();
    if let Some(Value::Array(ports)) = new.pointer_mut("/spec/ports") {
        for p in ports.iter_mut() {
            if p.get("nodePort").is_none()
                && let Some(old) =
                    old_ports.iter().find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                && let Some(np) = old.get("nodePort")
            {
                p["nodePort"] = np.clone();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::validate;
    use super::*;

    #[test]
    fn bad_names_and_service() {
        let s = json!({"metadata": {"name": "Bad_Name", "namespace": "default"}, "spec": {"ports": [{"port": 70000}]}});
        let causes = validate(&Service, true, &s);
        assert_eq!(causes[0].field, "metadata.name");
        assert_eq!(causes[1].field, "spec.ports[0].port");
    }
}
