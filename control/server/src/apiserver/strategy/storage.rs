//! Storage kinds: StorageClass, PersistentVolume and PersistentVolumeClaim, stored and
//! validated as upstream (required fields, enums, immutable specs). Binding and
//! provisioning are controllers' work and are not done here.

use serde_json::{Value, json};

use super::super::status::Cause;
use super::checks::{
    default_at, defaulted, forbidden, immutable, ok_if_empty, one_of, quantities, required_because, required_str,
    selector, str_at,
};
use super::{Strategy, drop_status};

const ACCESS_MODES: &[&str] = &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];

#[derive(Debug)]
pub struct StorageClass;

impl Strategy for StorageClass {
    fn default(&self, obj: &mut Value) {
        default_at(obj, "/reclaimPolicy", json!("Delete"));
        default_at(obj, "/volumeBindingMode", json!("Immediate"));
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        if required_str(obj, "/provisioner", "provisioner", causes) {
            let p = str_at(obj, "/provisioner").unwrap_or("");
            if p.len() > 63 || p.contains(char::is_whitespace) {
                causes.push(Cause::invalid(
                    "provisioner",
                    &json!(p),
                    "must be a qualified name of at most 63 characters",
                ));
            }
        }
        one_of(obj, "/reclaimPolicy", "reclaimPolicy", &["Delete", "Retain"], causes);
        one_of(obj, "/volumeBindingMode", "volumeBindingMode", &["Immediate", "WaitForFirstConsumer"], causes);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        let mut causes = Vec::new();
        for f in ["parameters", "provisioner", "reclaimPolicy", "volumeBindingMode"] {
            let ptr = format!("/{f}");
            if cur.pointer(&ptr) != new.pointer(&ptr) {
                causes.push(forbidden(f, &format!("updates to {f} are forbidden.")));
            }
        }
        ok_if_empty(causes)
    }
}

fn access_modes(obj: &Value, ptr: &str, field: &str, causes: &mut Vec<Cause>) {
    match obj.pointer(ptr).and_then(Value::as_array) {
        Some(modes) if !modes.is_empty() => {
            for m in modes {
                let m = m.as_str().unwrap_or("");
                if !ACCESS_MODES.contains(&m) {
                    causes.push(Cause::not_supported(field, &json!(m), ACCESS_MODES));
                }
            }
        }
        _ => causes.push(Cause::required(field)),
    }
}

/// The volume sources a PersistentVolume may have (exactly one is required).
const PV_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

#[derive(Debug)]
pub struct PersistentVolume;

impl Strategy for PersistentVolume {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, "/spec/persistentVolumeReclaimPolicy", json!("Retain"));
        default_at(obj, "/spec/volumeMode", json!("Filesystem"));
        default_at(obj, "/status", json!({}));
        default_at(obj, "/status/phase", json!("Pending"));
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        access_modes(obj, "/spec/accessModes", "spec.accessModes", causes);
        if obj.pointer("/spec/capacity/storage").is_none() {
            causes.push(Cause::required("spec.capacity"));
        }
        quantities(obj, "/spec/capacity", "spec.capacity", causes);
        let sources = PV_SOURCES.iter().filter(|s| obj.pointer(&format!("/spec/{s}")).is_some_and(|v| !v.is_null()));
        match sources.count() {
            0 => causes.push(required_because("spec", "must specify a volume type")),
            1 => {}
            _ => causes.push(forbidden("spec", "may not specify more than 1 volume type")),
        }
        if let Some(p) = str_at(obj, "/spec/local/path")
            && !p.starts_with('/')
        {
            causes.push(Cause::invalid("spec.local.path", &json!(p), "must be an absolute path"));
        }
        one_of(
            obj,
            "/spec/persistentVolumeReclaimPolicy",
            "spec.persistentVolumeReclaimPolicy",
            &["Delete", "Recycle", "Retain"],
            causes,
        );
        one_of(obj, "/spec/volumeMode", "spec.volumeMode", VOLUME_MODES, causes);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        let mut causes = Vec::new();
        for f in PV_SOURCES {
            immutable(cur, new, &format!("/spec/{f}"), &format!("spec.persistentvolumesource.{f}"), &mut causes);
        }
        immutable(cur, new, "/spec/volumeMode", "spec.volumeMode", &mut causes);
        ok_if_empty(causes)
    }
}

#[derive(Debug)]
pub struct PersistentVolumeClaim;

impl Strategy for PersistentVolumeClaim {
    fn prepare_for_create(&self, obj: &mut Value, _uid: &str) {
        drop_status(obj);
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, "/spec/volumeMode", json!("Filesystem"));
        default_at(obj, "/status", json!({}));
        default_at(obj, "/status/phase", json!("Pending"));
    }

    fn validate(&self, obj: &Value, causes: &mut Vec<Cause>) {
        access_modes(obj, "/spec/accessModes", "spec.accessModes", causes);
        if obj.pointer("/spec/resources/requests/storage").is_none() {
            causes.push(Cause::required("spec.resources[storage]"));
        }
        quantities(obj, "/spec/resources/requests", "spec.resources.requests", causes);
        quantities(obj, "/spec/resources/limits", "spec.resources.limits", causes);
        selector(obj, "/spec/selector", "spec.selector", causes);
        one_of(obj, "/spec/volumeMode", "spec.volumeMode", VOLUME_MODES, causes);
    }

    fn prepare_for_update(&self, cur: &Value, new: &mut Value) -> Result<(), Vec<Cause>> {
        let new = &defaulted(self, new);
        // As upstream: after creation only the requested size (and the volume it binds
        // to, set once) may change.
        let strip = |v: &Value| {
            let mut s = v.get("spec").cloned().unwrap_or(json!({}));
            if let Some(m) = s.as_object_mut() {
                m.remove("resources");
                if v.pointer("/spec/volumeName").is_none_or(|n| n.as_str() == Some("")) {
                    m.remove("volumeName");
                }
            }
            s
        };
        let mut cur_spec = strip(cur);
        if let (Some(c), Some(n)) = (cur_spec.as_object_mut(), new.pointer("/spec/volumeName")) {
            c.entry("volumeName").or_insert(n.clone());
        }
        if cur_spec != strip(new) {
            return Err(vec![forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            )]);
        }
        Ok(())
    }
}
