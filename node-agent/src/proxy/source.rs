//! Where Services and EndpointSlices come from.
//!
//! [`ServiceSource`] hands out *changes* (upserts and deletions keyed by namespace/name),
//! so the reconciler's work stays proportional to what changed. Two sources implement
//! it: [`ManifestDirSource`], a directory of YAML/JSON manifests used by the demo and the
//! tests, and `api_source::ApiServiceSource`, the API server's objects through reflectors.
//!
//! A source must not write the maps or interpret the objects beyond picking the two
//! kinds: validation is the model's job (`model.rs`), so that every source rejects the
//! same inputs in the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;

use super::model::ObjectRef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list manifest directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One change of the inputs. Upserts carry the whole object; deletions only its key.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceEvent {
    ServiceUpserted(Box<Service>),
    ServiceDeleted(ObjectRef),
    EndpointSliceUpserted(Box<EndpointSlice>),
    EndpointSliceDeleted(ObjectRef),
}

impl std::fmt::Display for SourceEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = |m: &ObjectMeta| ObjectRef::from_meta(m).map(|r| r.to_string()).unwrap_or_default();
        match self {
            Self::ServiceUpserted(s) => write!(f, "upsert Service {}", r(&s.metadata)),
            Self::ServiceDeleted(o) => write!(f, "delete Service {o}"),
            Self::EndpointSliceUpserted(s) => write!(f, "upsert EndpointSlice {}", r(&s.metadata)),
            Self::EndpointSliceDeleted(o) => write!(f, "delete EndpointSlice {o}"),
        }
    }
}

/// A supplier of Service and EndpointSlice changes.
///
/// `poll` returns what changed since the previous call, without blocking for long: the
/// first call returns every object as an upsert (the initial snapshot; the reconciler's
/// first sync must wait for it, or it would remove frontends it adopted), later calls
/// only differences. A source that loses track (a watch that expired) must recover by
/// itself and report the difference, including deletions of objects that disappeared.
pub trait ServiceSource {
    fn poll(&mut self) -> Result<Vec<SourceEvent>>;

    /// Whether the source has its initial snapshot, so that the next `poll` may be taken
    /// as the complete state. A caller must not poll before (the first poll of a source
    /// that is not ready would be an empty snapshot, and the proxy would remove what it
    /// adopted). A file source is always ready; the API source once its LISTs are in.
    fn ready(&self) -> bool {
        true
    }
}

/// The kinds a source passes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
}

/// A parsed object of one of the two kinds, namespace filled in.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl Object {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Service(s) => &s.metadata,
            Self::EndpointSlice(s) => &s.metadata,
        }
    }

    pub fn kind(&self) -> ObjectKind {
        match self {
            Self::Service(_) => ObjectKind::Service,
            Self::EndpointSlice(_) => ObjectKind::EndpointSlice,
        }
    }

    /// Kind, namespace and name. Parsing guarantees the name, so this cannot fail.
    fn key(&self) -> (ObjectKind, ObjectRef) {
        self.try_key().expect("parse_manifests rejects objects without a name")
    }

    /// Kind, namespace and name; `None` for an object without a name.
    pub(super) fn try_key(&self) -> Option<(ObjectKind, ObjectRef)> {
        Some((self.kind(), ObjectRef::from_meta(self.meta())?))
    }

    pub(super) fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Service(s) => &mut s.metadata,
            Self::EndpointSlice(s) => &mut s.metadata,
        }
    }

    pub(super) fn into_upsert(self) -> SourceEvent {
        match self {
            Self::Service(s) => SourceEvent::ServiceUpserted(s),
            Self::EndpointSlice(s) => SourceEvent::EndpointSliceUpserted(s),
        }
    }
}

pub(super) fn deletion(kind: ObjectKind, r: ObjectRef) -> SourceEvent {
    match kind {
        ObjectKind::Service => SourceEvent::ServiceDeleted(r),
        ObjectKind::EndpointSlice => SourceEvent::EndpointSliceDeleted(r),
    }
}

/// Why a manifest file was not read. The message names the document when the file has
/// several.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document {doc}: not valid YAML")]
    Yaml {
        doc: usize,
        #[source]
        source: serde_norway::Error,
    },
    #[error("not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("document {doc}: {what} is not a valid {kind}")]
    Object {
        doc: usize,
        kind: &'static str,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("document {doc}: {kind} without metadata.name")]
    NoName { doc: usize, kind: &'static str },
}

/// Parses one manifest file: YAML (several documents separated by `---`) or, when
/// `json` is set, one JSON document. `List` documents (and typed lists such as
/// `ServiceList`) are unpacked. Only `v1` Services and `discovery.k8s.io/v1`
/// EndpointSlices are returned; other kinds are skipped with a debug message. A missing
/// namespace becomes "default". Either the whole file parses or nothing is returned, so
/// a half-saved file never removes objects.
pub fn parse_manifests(text: &str, json: bool) -> Result<Vec<Object>, ParseError> {
    let mut docs = Vec::new();
    if json {
        docs.push(serde_json::from_str::<serde_json::Value>(text).map_err(ParseError::Json)?);
    } else {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value =
                serde_json::Value::deserialize(doc).map_err(|source| ParseError::Yaml { doc: i + 1, source })?;
            docs.push(value);
        }
    }
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        collect_objects(doc, i + 1, &mut out)?;
    }
    Ok(out)
}

fn collect_objects(value: serde_json::Value, doc: usize, out: &mut Vec<Object>) -> Result<(), ParseError> {
    // `---` at the start or end of a file yields empty documents.
    if value.is_null() {
        return Ok(());
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    let api_version = value.get("apiVersion").and_then(|k| k.as_str()).unwrap_or_default().to_owned();

    if let (Some(item_kind), Some(serde_json::Value::Array(items))) = (kind.strip_suffix("List"), value.get("items")) {
        for mut item in items.clone() {
            // Typed lists (`ServiceList`) leave kind and apiVersion out of their items.
            if let Some(obj) = item.as_object_mut()
                && !item_kind.is_empty()
            {
                obj.entry("kind").or_insert_with(|| item_kind.into());
                obj.entry("apiVersion").or_insert_with(|| api_version.clone().into());
            }
            collect_objects(item, doc, out)?;
        }
        return Ok(());
    }

    let what = || {
        let name = value.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("<unnamed>");
        format!("{kind} {name:?}")
    };
    match (kind.as_str(), api_version.as_str()) {
        ("Service", "v1") => {
            let mut svc: Service = serde_json::from_value(value.clone()).map_err(|source| ParseError::Object {
                doc,
                kind: "Service",
                what: what(),
                source,
            })?;
            fill_meta(&mut svc.metadata, doc, "Service")?;
            out.push(Object::Service(Box::new(svc)));
        }
        ("EndpointSlice", "discovery.k8s.io/v1") => {
            let mut slice: EndpointSlice = serde_json::from_value(value.clone())
                .map_err(|source| ParseError::Object { doc, kind: "EndpointSlice", what: what(), source })?;
            fill_meta(&mut slice.metadata, doc, "EndpointSlice")?;
            out.push(Object::EndpointSlice(Box::new(slice)));
        }
        _ => tracing::debug!(doc, kind, api_version, "ignoring manifest of another kind"),
    }
    Ok(())
}

fn fill_meta(meta: &mut ObjectMeta, doc: usize, kind: &'static str) -> Result<(), ParseError> {
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(ParseError::NoName { doc, kind });
    }
    if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".to_owned());
    }
    Ok(())
}

type ObjectKey = (ObjectKind, ObjectRef);

/// Modification time and size: a file whose stamp is unchanged is not read again.
type Stamp = (Option<SystemTime>, u64);

/// What we know about one file: its stamp when last read, and the objects of the last
/// version that parsed.
#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjectKey, Object>,
}

/// A directory of manifests (`*.yaml`, `*.yml`, `*.json`; hidden files are skipped, so
/// editors' swap files do not count). Each poll re-reads the files whose modification
/// time or size changed and reports the objects that were added, changed or removed
/// since the previous poll. Subdirectories are not read.
#[derive(Debug)]
pub struct ManifestDirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// The union of all files' objects as last reported.
    reported: BTreeMap<ObjectKey, Object>,
}

impl ManifestDirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: BTreeMap::new(), reported: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> Result<Vec<(PathBuf, Stamp)>> {
        let read_dir_err = |source| Error::ReadDir { dir: self.dir.clone(), source };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_dir_err)? {
            let path = entry.map_err(read_dir_err)?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            let is_manifest = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
            if name.starts_with('.') || !is_manifest {
                continue;
            }
            // Follows symlinks, as ConfigMap volumes are made of them. A file that
            // vanished since read_dir is simply not listed.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_file() {
                out.push((path, (meta.modified().ok(), meta.len())));
            }
        }
        Ok(out)
    }

    /// Re-reads one file. On failure the file's previous objects stay, and the new stamp
    /// is recorded so the same broken version is reported once, not on every poll.
    fn refresh(&mut self, path: PathBuf, stamp: Stamp) {
        let json = path.extension().is_some_and(|e| e == "json");
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_manifests(&text, json).map_err(|e| error_chain(&e)));
        let state = self.files.entry(path.clone()).or_insert_with(|| FileState { stamp, objects: BTreeMap::new() });
        state.stamp = stamp;
        match parsed {
            Ok(objects) => {
                let mut by_key = BTreeMap::new();
                for obj in objects {
                    let key = obj.key();
                    if by_key.insert(key.clone(), obj).is_some() {
                        tracing::warn!(file = %path.display(), kind = ?key.0, object = %key.1, "object defined twice in one file; the later one wins");
                    }
                }
                tracing::debug!(file = %path.display(), objects = by_key.len(), "read manifest file");
                state.objects = by_key;
            }
            Err(error) => tracing::error!(
                file = %path.display(),
                %error,
                kept_objects = state.objects.len(),
                "cannot read manifest file; keeping the objects from its last good version; fix the file and save it again"
            ),
        }
    }
}

/// An error and its sources on one line: the useful part of a serde error is often in
/// the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

impl ServiceSource for ManifestDirSource {
    fn poll(&mut self) -> Result<Vec<SourceEvent>> {
        let listed = self.list()?;
        let mut changed = false;

        let present: std::collections::BTreeSet<&PathBuf> = listed.iter().map(|(p, _)| p).collect();
        let before = self.files.len();
        self.files.retain(|path, _| {
            let keep = present.contains(path);
            if !keep {
                tracing::info!(file = %path.display(), "manifest file removed; dropping its objects");
            }
            keep
        });
        changed |= self.files.len() != before;

        for (path, stamp) in listed {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            self.refresh(path, stamp);
            changed = true;
        }
        if !changed {
            return Ok(Vec::new());
        }

        // Rebuild the union. Files are visited in name order so that an object defined
        // in two files resolves the same way every time.
        let mut current: BTreeMap<ObjectKey, (Object, &Path)> = BTreeMap::new();
        for (path, state) in &self.files {
            for (key, obj) in &state.objects {
                if let Some((_, first)) = current.insert(key.clone(), (obj.clone(), path)) {
                    tracing::warn!(
                        kind = ?key.0, object = %key.1, first = %first.display(), second = %path.display(),
                        "object defined in two manifest files; the file later by name wins"
                    );
                }
            }
        }
        let current: BTreeMap<ObjectKey, Object> = current.into_iter().map(|(k, (o, _))| (k, o)).collect();

        let mut events = Vec::new();
        for key in self.reported.keys() {
            if !current.contains_key(key) {
                events.push(deletion(key.0, key.1.clone()));
            }
        }
        for (key, obj) in &current {
            if self.reported.get(key) != Some(obj) {
                events.push(obj.clone().into_upsert());
            }
        }
        self.reported = current;
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("skiff-proxy-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(events: &[SourceEvent]) -> Vec<String> {
        events.iter().map(ToString::to_string).collect()
    }

    const WEB: &str = "\
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: true}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {}
---
";

    #[test]
    fn multi_document_yaml_with_default_namespace() {
        let dir = TempDir::new("multidoc");
        dir.write("web.yaml", WEB);
        let mut src = ManifestDirSource::new(&dir.0);
        let events = src.poll().unwrap();
        assert_eq!(names(&events), ["upsert Service default/web", "upsert EndpointSlice default/web-abc"]);
        // Nothing changed: nothing to report.
        assert_eq!(src.poll().unwrap(), []);
    }

    #[test]
    fn json_and_lists() {
        let dir = TempDir::new("json");
        dir.write(
            "svc.json",
            r#"{"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "dns", "namespace": "kube-system"},
                 "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}
            ]}"#,
        );
        dir.write(
            "slices.yml",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n- metadata: {name: dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: dns}}\n  addressType: IPv4\n  endpoints: []\n",
        );
        dir.write("notes.txt", "not a manifest");
        let mut src = ManifestDirSource::new(&dir.0);
        let events = src.poll().unwrap();
        assert_eq!(names(&events), ["upsert Service kube-system/dns", "upsert EndpointSlice kube-system/dns-1"]);
    }

    #[test]
    fn changes_and_file_removal_are_reported_as_differences() {
        let dir = TempDir::new("diff");
        dir.write("web.yaml", WEB);
        dir.write(
            "api.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}\n",
        );
        let mut src = ManifestDirSource::new(&dir.0);
        assert_eq!(src.poll().unwrap().len(), 3);

        // Edit one object in web.yaml (the size changes, so the stamp does too).
        dir.write("web.yaml", &WEB.replace("10.244.1.2", "10.244.1.22"));
        let events = src.poll().unwrap();
        assert_eq!(names(&events), ["upsert EndpointSlice default/web-abc"]);

        std::fs::remove_file(dir.0.join("api.yaml")).unwrap();
        assert_eq!(names(&src.poll().unwrap()), ["delete Service shop/api"]);
    }

    #[test]
    fn broken_file_keeps_previous_objects() {
        let dir = TempDir::new("broken");
        dir.write("web.yaml", WEB);
        let mut src = ManifestDirSource::new(&dir.0);
        assert_eq!(src.poll().unwrap().len(), 2);

        // Half-saved: invalid YAML, then a valid YAML whose Service is malformed.
        dir.write("web.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web\n");
        assert_eq!(src.poll().unwrap(), []);
        dir.write(
            "web.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
        );
        assert_eq!(src.poll().unwrap(), []);

        // Fixed again, now without the slice: only then is the slice deleted.
        let fixed = WEB.split("---\napiVersion: discovery.k8s.io/v1").next().unwrap();
        dir.write("web.yaml", fixed);
        assert_eq!(names(&src.poll().unwrap()), ["delete EndpointSlice default/web-abc"]);
    }

    #[test]
    fn parse_errors_name_the_document() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {}\n";
        let err = parse_manifests(text, false).unwrap_err();
        assert_eq!(err.to_string(), "document 2: Service without metadata.name");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let mut src = ManifestDirSource::new("/nonexistent/skiff-manifests");
        let err = src.poll().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/skiff-manifests"), "{err}");
    }
}
