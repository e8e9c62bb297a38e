//! Static pods: pods the node runs from manifest files in a directory of its own
//! (`--pod-manifest-path`), without the API server deciding, as upstream's kubelet does
//! for control-plane components. Each runs under the name `<name>-<node>`, with a uid
//! that is a hash of the node and the file, so a changed file is a new pod. Each is
//! mirrored into the API as a mirror pod (annotation `kubernetes.io/config.mirror`),
//! which shows it in `kubectl get pods` and carries its status; the mirror is made again
//! when it is deleted, and goes when the file goes. A mirror pod is never run: the file
//! is the truth.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use sha2::{Digest, Sha256};

pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is the API's mirror of a static pod (never run from the API).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// The static pod a mirror stands for (its uid), if `pod` is a mirror.
pub fn mirrored_uid(pod: &Pod) -> Option<&str> {
    pod.metadata.annotations.as_ref()?.get(CONFIG_MIRROR).map(String::as_str)
}

/// Why a manifest file was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Pod manifest: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{path}: a static pod needs metadata.name")]
    NoName { path: String },
}

/// The static pods of `dir` by uid, and the files that could not be taken.
pub fn read_dir(dir: &Path, node: &str) -> (BTreeMap<String, Pod>, Vec<Error>) {
    let mut pods = BTreeMap::new();
    let mut errors = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (pods, errors) };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let is_manifest = path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if !is_manifest || !path.is_file() {
            continue;
        }
        match read_manifest(&path, node) {
            Ok(pod) => {
                pods.insert(pod.metadata.uid.clone().unwrap_or_default(), pod);
            }
            Err(e) => errors.push(e),
        }
    }
    (pods, errors)
}

fn read_manifest(path: &Path, node: &str) -> Result<Pod, Error> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: display.clone(), source })?;
    let pod: Pod = serde_norway::from_str(&text).map_err(|source| Error::Parse { path: display.clone(), source })?;
    static_pod(pod, node, &text).ok_or(Error::NoName { path: display })
}

/// A manifest's pod as this node runs it.
pub fn static_pod(mut pod: Pod, node: &str, manifest: &str) -> Option<Pod> {
    let name = pod.metadata.name.clone()?;
    let uid = {
        let digest = Sha256::new().chain_update(node).chain_update([0]).chain_update(manifest).finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>()
    };
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata.namespace.get_or_insert_with(|| "default".into());
    pod.metadata.uid = Some(uid.clone());
    let annotations = pod.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.insert(CONFIG_HASH.into(), uid);
    pod.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
    pod.status = None;
    Some(pod)
}

/// The mirror pod of a static pod, owned by its Node.
pub fn mirror_of(pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut mirror = pod.clone();
    let uid = mirror.metadata.uid.take().unwrap_or_default();
    mirror.metadata.annotations.get_or_insert_with(Default::default).insert(CONFIG_MIRROR.into(), uid);
    mirror.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: node_uid.into(),
        controller: Some(true),
        ..Default::default()
    }]);
    mirror
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: app, image: img}]\n";

    #[test]
    fn a_manifest_becomes_a_pod_named_for_the_node_with_a_stable_uid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), MANIFEST).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (pods, errors) = read_dir(dir.path(), "n1");
        assert_eq!(pods.len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (uid, pod) = pods.iter().next().unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(pod.metadata.annotations.as_ref().unwrap()[CONFIG_HASH], *uid);
        let (again, _) = read_dir(dir.path(), "n1");
        assert_eq!(again.keys().collect::<Vec<_>>(), pods.keys().collect::<Vec<_>>(), "same file, same uid");
        std::fs::write(dir.path().join("web.yaml"), MANIFEST.replace("img", "img2")).unwrap();
        let (changed, _) = read_dir(dir.path(), "n1");
        assert_ne!(changed.keys().next(), pods.keys().next(), "a changed file is a new pod");
    }

    #[test]
    fn the_mirror_points_back_at_the_static_pod_and_is_owned_by_the_node() {
        let pod = static_pod(serde_norway::from_str(MANIFEST).unwrap(), "n1", MANIFEST).unwrap();
        let mirror = mirror_of(&pod, "n1", "node-uid");
        assert!(is_mirror(&mirror) && !is_mirror(&pod));
        assert_eq!(mirrored_uid(&mirror), pod.metadata.uid.as_deref());
        assert_eq!(mirror.metadata.uid, None);
        assert_eq!(mirror.metadata.owner_references.unwrap()[0].kind, "Node");
    }
}
