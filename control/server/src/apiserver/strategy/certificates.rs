//! CertificateSigningRequest (certificates.k8s.io/v1), as upstream's CSR strategy: the
//! requester's identity is recorded in the spec by the server, the spec never changes
//! after create, and the status is written only through the `status` (the signer's
//! certificate) and `approval` (Approved/Denied conditions) subresources.
//!
//! It must not parse the PKCS#10 request or decide anything about it: approving and
//! signing are `certificates`' (the in-process approver and signer).

use serde_json::{Value, json};

use super::super::status::Cause;
use super::{Strategy, drop_status};
use crate::auth::UserInfo;

const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

#[derive(Debug)]
pub struct CertificateSigningRequest;

impl Strategy for CertificateSigningRequest {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        // The request and who sent it are fixed at create.
        new["spec"] = cur.get("spec").cloned().unwrap_or(Value::Null);
        Ok(())
    }

    fn record_requester(&self, obj: &mut Value, user: &UserInfo) {
        let spec = &mut obj["spec"];
        spec["username"] = json!(user.name);
        spec["groups"] = json!(user.groups);
        if let Some(m) = spec.as_object_mut() {
            m.remove("uid");
            m.remove("extra");
        }
    }

    fn has_approval(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        if spec.get("request").and_then(|r| r.as_str()).is_none_or(str::is_empty) {
            causes.push(Cause::required("spec.request"));
        }
        match spec.get("signerName").and_then(|s| s.as_str()) {
            None | Some("") => causes.push(Cause::required("spec.signerName")),
            Some(s) if !s.contains('/') => causes.push(Cause::invalid(
                "spec.signerName",
                &json!(s),
                "must be a fully qualified domain and path of the form 'example.com/signer-name'",
            )),
            Some(_) => {}
        }
        let usages = spec.get("usages").and_then(|u| u.as_array()).cloned().unwrap_or_default();
        if usages.is_empty() {
            causes.push(Cause::required("spec.usages"));
        }
        for (i, u) in usages.iter().enumerate() {
            if !u.as_str().is_some_and(|u| USAGES.contains(&u)) {
                causes.push(Cause::not_supported(format!("spec.usages[{i}]"), u, USAGES));
            }
        }
        if let Some(e) = spec.get("expirationSeconds").and_then(|e| e.as_i64())
            && e < 600
        {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                &json!(e),
                "may not specify a duration less than 600 seconds (10 minutes)",
            ));
        }
        let conditions = obj.pointer("/status/conditions").and_then(|c| c.as_array()).cloned().unwrap_or_default();
        let has = |t: &str| conditions.iter().any(|c| c["type"] == t);
        if has("Approved") && has("Denied") {
            causes.push(Cause::invalid(
                "status.conditions",
                &json!("Approved"),
                "Approved and Denied conditions are mutually exclusive",
            ));
        }
        for (i, c) in conditions.iter().enumerate() {
            let t = c.get("type").and_then(|t| t.as_str()).unwrap_or("");
            if t.is_empty() {
                causes.push(Cause::required(format!("status.conditions[{i}].type")));
            }
            if matches!(t, "Approved" | "Denied") && c.get("status").and_then(|s| s.as_str()) != Some("True") {
                causes.push(Cause::not_supported(format!("status.conditions[{i}].status"), &c["status"], &["True"]));
            }
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.signerName"]
    }
}

/// Fills a missing condition status (`True`) and the condition times, as upstream's
/// approval strategy does for clients that send only the type.
pub fn default_conditions(obj: &mut Value, now: &str) {
    if let Some(cs) = obj.pointer_mut("/status/conditions").and_then(|c| c.as_array_mut()) {
        for c in cs {
            if c.get("status").is_none_or(Value::is_null) {
                c["status"] = json!("True");
            }
            for t in ["lastUpdateTime", "lastTransitionTime"] {
                if c.get(t).is_none_or(Value::is_null) {
                    c[t] = json!(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::strategy;

    fn csr() -> Value {
        json!({"metadata": {"name": "node-csr-a"}, "spec": {"request": "LS0t", "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"], "username": "forged", "uid": "x"}})
    }

    #[test]
    fn requester_is_recorded_and_spec_is_immutable() {
        let s = CertificateSigningRequest;
        let mut o = csr();
        s.record_requester(
            &mut o,
            &UserInfo { name: "system:bootstrap:abcdef".into(), groups: vec!["system:bootstrappers".into()] },
        );
        assert_eq!(o["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(o["spec"]["groups"], json!(["system:bootstrappers"]));
        assert!(o["spec"].get("uid").is_none());
        let mut new = o.clone();
        new["spec"]["request"] = json!("b3RoZXI=");
        s.prepare_for_update(&o, &mut new).unwrap();
        assert_eq!(new["spec"], o["spec"]);
        assert!(strategy::validate(&s, false, &o).is_empty());
    }

    #[test]
    fn validation() {
        let s = CertificateSigningRequest;
        let mut o = csr();
        o["spec"]["usages"] = json!(["client auth", "flying"]);
        o["spec"]["signerName"] = json!("nope");
        o["status"] =
            json!({"conditions": [{"type": "Approved", "status": "True"}, {"type": "Denied", "status": "True"}]});
        let fields: Vec<String> = strategy::validate(&s, false, &o).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.signerName", "spec.usages[1]", "status.conditions"]);
        let mut o = csr();
        o["status"] = json!({"conditions": [{"type": "Approved"}]});
        default_conditions(&mut o, "2026-01-01T00:00:00Z");
        assert_eq!(o["status"]["conditions"][0]["status"], "True");
        assert!(strategy::validate(&s, false, &o).is_empty());
    }
}
