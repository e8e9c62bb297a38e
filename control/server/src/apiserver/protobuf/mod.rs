//! Decoding of the Kubernetes protobuf wire format for the kinds `kubectl create`
//! sends as protobuf (ConfigMap, Secret, Namespace, ServiceAccount, RoleBinding,
//! ClusterRoleBinding, and the TokenRequest of `kubectl create token`; Deployment, Job
//! and Service by table in `workloads`; CronJob, Ingress, PodDisruptionBudget,
//! PriorityClass, ResourceQuota, Role, ClusterRole and the authorization reviews by
//! table in `generators`): client-go prefers protobuf for built-in types and does not
//! fall back to JSON on 415. Other kinds get 415.
//!
//! Envelope: the magic `k8s\0`, then `runtime.Unknown{typeMeta=1, raw=2}` whose `raw`
//! is the object's message. This module only turns bytes into JSON; it must not
//! validate (the normal create path does).

mod certificates;
mod generators;
mod kinds;
mod wire;
mod workloads;

use serde_json::{Value, json};

use wire::{Field, Res, fields, string};

/// Decodes an enveloped protobuf object into JSON (with kind and apiVersion set).
pub fn decode(body: &[u8]) -> Res<Value> {
    let rest = body.strip_prefix(b"k8s\0").ok_or("missing the k8s protobuf magic prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (m, g) in fields(tm)? {
                    match (m, g) {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = Some(x),
            _ => {}
        }
    }
    let raw = raw.ok_or("protobuf envelope without raw object")?;
    let mut obj = match kind.as_str() {
        "ConfigMap" => kinds::config_map(raw)?,
        "Secret" => kinds::secret(raw)?,
        "Namespace" => kinds::namespace(raw)?,
        "ServiceAccount" => kinds::service_account(raw)?,
        "TokenRequest" => kinds::token_request(raw)?,
        "RoleBinding" | "ClusterRoleBinding" => kinds::role_binding(raw)?,
        "CertificateSigningRequest" => certificates::certificate_signing_request(raw)?,
        "HorizontalPodAutoscaler" if api_version != "autoscaling/v1" => {
            return Err(format!(
                "protobuf is supported for autoscaling/v1 HorizontalPodAutoscalers, not {api_version}; send JSON"
            ));
        }
        other => match workloads::decode(other, raw) {
            Some(obj) => obj?,
            None => return Err(format!("protobuf is not supported for kind {other:?}; send JSON")),
        },
    };
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(api_version);
    Ok(obj)
}
#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn ld(n: u64, b: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn decodes_configmap_envelope() {
        let meta = [ld(1, b"cfg"), ld(11, &[ld(1, b"app"), ld(2, b"x")].concat())].concat();
        let cm = [ld(1, &meta), ld(2, &[ld(1, b"a"), ld(2, b"1")].concat())].concat();
        let tm = [ld(1, b"v1"), ld(2, b"ConfigMap")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &cm)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "cfg", "labels": {"app": "x"}}, "data": {"a": "1"}})
        );
        assert!(decode(b"nope").is_err());
        assert!(decode(&body[..body.len() - 3]).is_err());
    }

    #[test]
    fn decodes_role_binding_envelope() {
        let subject = [ld(1, b"ServiceAccount"), ld(3, b"bot"), ld(4, b"team")].concat();
        let role_ref = [ld(1, b"rbac.authorization.k8s.io"), ld(2, b"ClusterRole"), ld(3, b"view")].concat();
        let rb = [ld(1, &ld(1, b"bot-view")), ld(2, &subject), ld(3, &role_ref)].concat();
        let tm = [ld(1, b"rbac.authorization.k8s.io/v1"), ld(2, b"RoleBinding")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &rb)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"kind": "RoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "bot-view"},
                "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}})
        );
    }

    #[test]
    fn decodes_token_request_envelope() {
        let bound = [ld(1, b"Pod"), ld(2, b"v1"), ld(3, b"p")].concat();
        // expirationSeconds = 7200: field 4, varint 0xa0 0x38.
        let spec = [ld(1, b"vault"), ld(1, b"api"), ld(3, &bound), vec![4 << 3, 0xa0, 0x38]].concat();
        let tr = [ld(1, &ld(1, b"bot")), ld(2, &spec)].concat();
        let tm = [ld(1, b"authentication.k8s.io/v1"), ld(2, b"TokenRequest")].concat();
        let body = [b"k8s\0".to_vec(), ld(1, &tm), ld(2, &tr)].concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": "bot"},
                "spec": {"audiences": ["vault", "api"], "expirationSeconds": 7200,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}})
        );
    }
}
