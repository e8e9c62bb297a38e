use std::os::unix::fs::PermissionsExt;

use k8s_openapi::api::core::v1::VolumeMount;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use super::super::lookup::TokenCache;
use super::super::lookup::fake::FakeLookup;
use super::*;

fn pod(volumes: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "namespace": "ns", "uid": "uid-1", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "bot", "volumes": volumes,
                 "containers": [{"name": "app", "resources": {"limits": {"memory": "64Mi"}}}]},
    }))
    .unwrap()
}

fn env_ctx() -> EnvContext {
    EnvContext { node_name: "n1".into(), ..Default::default() }
}

fn lookup() -> FakeLookup {
    FakeLookup::new()
        .with_config_map("ns", "cfg", &[("a", "1"), ("b", "2")])
        .with_config_map("ns", "kube-root-ca.crt", &[("ca.crt", "-----BEGIN CERTIFICATE-----\n")])
        .with_secret("ns", "creds", &[("user", "admin"), ("pass", "s3cret")])
}

async fn prepare(p: &Pod, dir: &Path, l: &FakeLookup) -> Result<PreparedVolumes> {
    let env = env_ctx();
    prepare_volumes(p, dir, &VolumeContext { env: &env, secrets_on_tmpfs: false }, l).await
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn config_map_and_secret_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pod(json!([
        {"name": "all", "configMap": {"name": "cfg"}},
        {"name": "some", "configMap": {"name": "cfg", "defaultMode": 0o600,
            "items": [{"key": "a", "path": "dir/a.txt"}, {"key": "b", "path": "b.txt", "mode": 0o400}]}},
        {"name": "maybe", "configMap": {"name": "absent", "optional": true}},
        {"name": "sec", "secret": {"secretName": "creds"}},
        {"name": "sec-items", "secret": {"secretName": "creds", "items": [{"key": "pass", "path": "p"}]}},
    ]));
    let prepared = prepare(&p, tmp.path(), &lookup()).await.unwrap();
    let root = |v: &str| prepared.get(v).unwrap().host_path.clone();
    assert_eq!(root("all"), tmp.path().join("volumes/kubernetes.io~configmap/all"));
    assert_eq!(read(&root("all").join("a")), "1");
    assert_eq!(read(&root("all").join("b")), "2");
    assert_eq!(mode(&root("all").join("a")), 0o644);
    assert_eq!(read(&root("some").join("dir/a.txt")), "1");
    assert_eq!(mode(&root("some").join("dir/a.txt")), 0o600);
    assert_eq!(mode(&root("some").join("b.txt")), 0o400);
    assert!(!root("some").join("a").exists());
    assert!(root("maybe").join("..data").exists(), "an optional missing ConfigMap is an empty volume");
    assert_eq!(root("sec"), tmp.path().join("volumes/kubernetes.io~secret/sec"));
    assert_eq!(read(&root("sec").join("pass")), "s3cret");
    assert_eq!(mode(&root("sec").join("user")), 0o644);
    assert_eq!(read(&root("sec-items").join("p")), "s3cret");
    assert!(prepared.volumes.values().all(|v| v.read_only));

    // A refresh follows the ConfigMap: the same path shows the new value.
    let changed = lookup().with_config_map("ns", "cfg", &[("a", "one"), ("b", "2")]);
    let again = prepare(&p, tmp.path(), &changed).await.unwrap();
    assert_eq!(again, prepared);
    assert_eq!(read(&root("all").join("a")), "one");
    assert_eq!(read(&root("some").join("dir/a.txt")), "one");
}

#[tokio::test]
async fn errors_name_the_volume_and_what_is_missing() {
    let cases = [
        (json!([{"name": "v", "configMap": {"name": "gone"}}]), "volume \"v\": configmap \"gone\" not found"),
        (json!([{"name": "v", "secret": {"secretName": "gone"}}]), "volume \"v\": secret \"gone\" not found"),
        (
            json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}]),
            "volume \"v\": configmap references non-existent key: zz",
        ),
        (
            json!([{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]),
            "volume \"v\": persistentvolumeclaim \"data\" not found",
        ),
        (json!([{"name": "v", "nfs": {"server": "s", "path": "/"}}]), "nfs volumes are not supported"),
        (json!([{"name": "v", "emptyDir": {"medium": "HugePages"}}]), "emptyDir medium HugePages"),
        (
            json!([{"name": "v", "hostPath": {"path": "/nonexistent/skiff", "type": "Directory"}}]),
            "volume \"v\": hostPath type check failed: /nonexistent/skiff is not a directory",
        ),
        (
            json!([{"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "../escape"}]}}]),
            "must not contain '..'",
        ),
        (
            json!([{"name": "v", "downwardAPI": {"items": [{"path": "x", "fieldRef": {"fieldPath": "spec.bogus"}}]}}]),
            "volume \"v\" item \"x\": unsupported fieldPath \"spec.bogus\"",
        ),
    ];
    for (volumes, want) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let err = prepare(&pod(volumes.clone()), tmp.path(), &lookup()).await.unwrap_err().to_string();
        assert!(err.contains(want), "{volumes}: got {err:?}, want {want:?}");
    }
}

#[tokio::test]
async fn one_bad_volume_does_not_stop_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let p =
        pod(json!([{"name": "bad", "configMap": {"name": "gone"}}, {"name": "good", "configMap": {"name": "cfg"}}]));
    assert!(prepare(&p, tmp.path(), &lookup()).await.is_err());
    assert_eq!(read(&tmp.path().join("volumes/kubernetes.io~configmap/good/a")), "1");
}

#[tokio::test]
async fn empty_dir_and_host_path() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host/data");
    let p = pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "hp", "hostPath": {"path": host, "type": "DirectoryOrCreate"}},
    ]));
    let pod_dir = tmp.path().join("pod");
    let prepared = prepare(&p, &pod_dir, &lookup()).await.unwrap();
    let scratch = &prepared.get("scratch").unwrap().host_path;
    assert_eq!(scratch, &pod_dir.join("volumes/kubernetes.io~empty-dir/scratch"));
    assert_eq!(mode(scratch), 0o777);
    assert!(!prepared.get("scratch").unwrap().read_only);
    std::fs::write(scratch.join("kept"), "x").unwrap();
    assert_eq!(prepared.get("hp").unwrap().host_path, host);
    assert!(host.is_dir());
    // Idempotent: a second call keeps what the container wrote.
    assert_eq!(prepare(&p, &pod_dir, &lookup()).await.unwrap(), prepared);
    assert_eq!(read(&scratch.join("kept")), "x");
    cleanup_volumes(&pod_dir).unwrap();
    assert!(!pod_dir.join("volumes").exists());
    assert!(host.is_dir(), "a hostPath outlives the pod");
    cleanup_volumes(&pod_dir).unwrap();
}

#[tokio::test]
async fn downward_api_files() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pod(json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
        {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "1m"}},
    ]}}]));
    let env = EnvContext { node_allocatable: [("cpu".to_string(), Quantity("2".into()))].into(), ..env_ctx() };
    let ctx = VolumeContext { env: &env, secrets_on_tmpfs: false };
    let prepared = prepare_volumes(&p, tmp.path(), &ctx, &lookup()).await.unwrap();
    let root = prepared.get("info").unwrap().host_path.clone();
    assert_eq!(root, tmp.path().join("volumes/kubernetes.io~downward-api/info"));
    assert_eq!(read(&root.join("name")), "web-1");
    assert_eq!(read(&root.join("labels")), "app=\"web\"");
    assert_eq!(read(&root.join("mem")), "64");
    assert_eq!(read(&root.join("cpu")), "2000");

    let no_container = pod(json!([{"name": "info", "downwardAPI": {"items": [
        {"path": "mem", "resourceFieldRef": {"resource": "limits.memory"}}]}}]));
    let err = prepare(&no_container, tmp.path(), &lookup()).await.unwrap_err().to_string();
    assert!(err.contains("without containerName"), "{err}");
}

/// The volume upstream's ServiceAccount admission adds to every pod.
fn kube_api_access() -> serde_json::Value {
    json!([{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}])
}

#[tokio::test]
async fn kube_api_access_projected_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pod(kube_api_access());
    let cache = TokenCache::new(lookup());
    let env = env_ctx();
    let ctx = VolumeContext { env: &env, secrets_on_tmpfs: false };
    let prepared = prepare_volumes(&p, tmp.path(), &ctx, &cache).await.unwrap();
    let root = prepared.get("kube-api-access-x7k2p").unwrap().host_path.clone();
    assert_eq!(root, tmp.path().join("volumes/kubernetes.io~projected/kube-api-access-x7k2p"));
    assert_eq!(read(&root.join("token")), "token-1-for-ns/bot-web-1");
    assert_eq!(read(&root.join("ca.crt")), "-----BEGIN CERTIFICATE-----\n");
    assert_eq!(read(&root.join("namespace")), "ns");
    assert_eq!(mode(&root.join("token")), 0o644);

    // What a container sees at /var/run/secrets/kubernetes.io/serviceaccount.
    let c: Container = serde_json::from_value(json!({"name": "app", "volumeMounts": [{"name": "kube-api-access-x7k2p",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}))
    .unwrap();
    let mounts = container_mounts(&p, &c, &prepared, &[]).unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].container_path, "/var/run/secrets/kubernetes.io/serviceaccount");
    assert_eq!(Path::new(&mounts[0].host_path), root);
    assert!(mounts[0].readonly);

    // Refreshing reuses the cached token: nothing is rewritten.
    let data = std::fs::read_link(root.join("..data")).unwrap();
    prepare_volumes(&p, tmp.path(), &ctx, &cache).await.unwrap();
    assert_eq!(std::fs::read_link(root.join("..data")).unwrap(), data);
    assert_eq!(cache.inner().tokens_issued.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without the root CA ConfigMap the volume cannot be made (it is not optional).
    let bare = FakeLookup::new();
    let err = prepare(&p, &tmp.path().join("other"), &bare).await.unwrap_err().to_string();
    assert!(err.contains("configmap \"kube-root-ca.crt\" not found"), "{err}");
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), ..Default::default() }
}

#[tokio::test]
async fn container_mounts_and_sub_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let p = pod(json!([{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "cfg"}}]));
    let prepared = prepare(&p, &tmp.path().join("pod"), &lookup()).await.unwrap();
    let scratch = prepared.get("scratch").unwrap().host_path.clone();
    std::os::unix::fs::symlink(&outside, scratch.join("escape")).unwrap();

    let env = [
        KeyValue { key: "POD_NAME".into(), value: "web-1".into() },
        KeyValue { key: "EMPTY".into(), value: String::new() },
    ];
    let c =
        |mounts: Vec<VolumeMount>| Container { name: "app".into(), volume_mounts: Some(mounts), ..Default::default() };
    let ok = c(vec![
        mount("scratch", "/data"),
        VolumeMount {
            read_only: Some(true),
            mount_propagation: Some("HostToContainer".into()),
            ..mount("scratch", "/ro")
        },
        VolumeMount { sub_path: Some("logs/app".into()), ..mount("scratch", "/logs") },
        VolumeMount { sub_path: Some("a".into()), ..mount("cfg", "/etc/a") },
        VolumeMount { sub_path_expr: Some("pods/$(POD_NAME)".into()), ..mount("scratch", "/mine") },
    ]);
    let m = container_mounts(&p, &ok, &prepared, &env).unwrap();
    assert_eq!((m[0].container_path.as_str(), m[0].readonly), ("/data", false));
    assert_eq!(Path::new(&m[0].host_path), scratch);
    assert_eq!(m[0].propagation, MountPropagation::PropagationPrivate as i32);
    assert!(m[1].readonly);
    assert_eq!(m[1].propagation, MountPropagation::PropagationHostToContainer as i32);
    assert!(scratch.join("logs/app").is_dir(), "a missing subPath is created");
    assert_eq!(Path::new(&m[2].host_path), scratch.canonicalize().unwrap().join("logs/app"));
    assert!(m[3].readonly, "configMap volumes are read-only");
    assert_eq!(read(Path::new(&m[3].host_path)), "1");
    assert_eq!(Path::new(&m[4].host_path), scratch.canonicalize().unwrap().join("pods/web-1"));

    let bad = [
        (VolumeMount { sub_path: Some("/abs".into()), ..mount("scratch", "/x") }, "must be a relative path"),
        (VolumeMount { sub_path: Some("a/../..".into()), ..mount("scratch", "/x") }, "must not contain '..'"),
        (VolumeMount { sub_path: Some("escape".into()), ..mount("scratch", "/x") }, "leads outside its volume"),
        (
            VolumeMount { sub_path_expr: Some("$(NOPE)/$(EMPTY)".into()), ..mount("scratch", "/x") },
            "(subPathExpr) has no value for EMPTY, NOPE",
        ),
        (mount("nope", "/x"), "volumeMount \"nope\" names no volume of the pod"),
    ];
    for (vm, want) in bad {
        let err = container_mounts(&p, &c(vec![vm.clone()]), &prepared, &env).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains("container \"app\""), "{vm:?}: {err}");
    }
}

#[tokio::test]
async fn memory_empty_dir_and_secrets_on_tmpfs() {
    if !skiff_tests::require_privileges("memory_empty_dir_and_secrets_on_tmpfs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pod_dir = tmp.path().join("pod");
    // Unmounts even when an assertion fails, so no tmpfs outlives the test.
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = cleanup_volumes(&self.0);
        }
    }
    let _cleanup = Cleanup(pod_dir.clone());
    let p = pod(json!([
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}},
        {"name": "sec", "secret": {"secretName": "creds"}},
    ]));
    let env = env_ctx();
    let ctx = VolumeContext { env: &env, secrets_on_tmpfs: true };
    let prepared = prepare_volumes(&p, &pod_dir, &ctx, &lookup()).await.unwrap();
    let mem = prepared.get("mem").unwrap().host_path.clone();
    let sec = prepared.get("sec").unwrap().host_path.clone();
    assert!(host::is_mount_point(&mem).unwrap() && host::is_mount_point(&sec).unwrap());
    let st = nix::sys::statvfs::statvfs(&mem).unwrap();
    assert_eq!(st.blocks() as u64 * st.fragment_size() as u64, 8 << 20, "sizeLimit is the tmpfs size");
    assert_eq!(mode(&mem), 0o777);
    assert_eq!(read(&sec.join("user")), "admin");
    // Idempotent: no second mount on top.
    prepare_volumes(&p, &pod_dir, &ctx, &lookup()).await.unwrap();
    assert_eq!(host::mounts_under(&pod_dir).unwrap().len(), 2);

    cleanup_volumes(&pod_dir).unwrap();
    assert!(host::mounts_under(&pod_dir).unwrap().is_empty());
    assert!(!pod_dir.join("volumes").exists());
}

/// A group this process may give files to: any as root, else its own.
fn group_we_may_use() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::tempfile().unwrap().metadata().unwrap();
    if probe.uid() == 0 { 2345 } else { probe.gid() }
}

#[tokio::test]
async fn fs_group_owns_the_volumes_files_and_empty_dirs() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let gid = group_we_may_use();
    let mut p = pod(json!([
        {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "sub/a", "mode": 0o600}]}},
        {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "down", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "host", "hostPath": {"path": tmp.path().join("host").to_str().unwrap(), "type": "DirectoryOrCreate"}},
    ]));
    p.spec.as_mut().unwrap().security_context =
        Some(k8s_openapi::api::core::v1::PodSecurityContext { fs_group: Some(i64::from(gid)), ..Default::default() });
    let prepared = prepare(&p, tmp.path(), &lookup()).await.unwrap();
    let root = |v: &str| prepared.get(v).unwrap().host_path.clone();
    let gid_of = |p: &Path| std::fs::metadata(p).unwrap().gid();

    // Files: the group's, with group read added to their modes.
    for (file, want) in
        [(root("cfg").join("sub/a"), 0o640), (root("sec").join("pass"), 0o440), (root("down").join("name"), 0o644)]
    {
        assert_eq!(gid_of(&file), gid, "{}", file.display());
        assert_eq!(mode(&file), want, "{}", file.display());
    }
    // Directories: the group's, with setgid.
    for dir in [root("cfg"), root("cfg").join("sub"), root("cfg").join("..data"), root("scratch")] {
        assert_eq!(gid_of(&dir), gid, "{}", dir.display());
        assert_eq!(mode(&dir) & 0o2000, 0o2000, "setgid on {}", dir.display());
    }
    assert_eq!(mode(&root("scratch")) & 0o777, 0o777, "the emptyDir stays writable for all");
    // hostPath volumes are left as they are.
    assert_eq!(mode(&root("host")) & 0o2000, 0);

    // A refresh with nothing changed writes nothing.
    let version = std::fs::read_link(root("cfg").join("..data")).unwrap();
    prepare(&p, tmp.path(), &lookup()).await.unwrap();
    assert_eq!(std::fs::read_link(root("cfg").join("..data")).unwrap(), version);
}

#[tokio::test]
async fn without_fs_group_nothing_is_given_away() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pod(json!([{"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "scratch", "emptyDir": {}}]));
    let prepared = prepare(&p, tmp.path(), &lookup()).await.unwrap();
    let root = |v: &str| prepared.get(v).unwrap().host_path.clone();
    assert_eq!(mode(&root("cfg").join("a")), 0o644);
    assert_eq!(mode(&root("scratch")), 0o777);
}

fn claim(name: &str, volume: Option<&str>, phase: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"volumeName": volume}, "status": {"phase": phase}})
}

fn host_path_volume(name: &str, path: &Path, local_path: bool) -> serde_json::Value {
    let annotations =
        if local_path { json!({"pv.kubernetes.io/provisioned-by": "skiff.io/local-path"}) } else { json!({}) };
    json!({"metadata": {"name": name, "annotations": annotations}, "spec": {
        "hostPath": {"path": path, "type": "DirectoryOrCreate"}, "capacity": {"storage": "1Gi"}}})
}

#[tokio::test]
async fn claims_mount_their_bound_volume_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = tmp.path().join("storage");
    let local = tmp.path().join("disk");
    std::fs::create_dir_all(&local).unwrap();
    let l = lookup()
        .with_claim("ns", claim("data", Some("pvc-1"), "Bound"))
        .with_volume(host_path_volume("pvc-1", &storage.join("pvc-1"), true))
        .with_claim("ns", claim("disk", Some("local-1"), "Bound"))
        .with_volume(json!({"metadata": {"name": "local-1"}, "spec": {"local": {"path": local}}}));
    let p = pod(json!([
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "ro", "persistentVolumeClaim": {"claimName": "disk", "readOnly": true}},
    ]));
    let prepared = prepare(&p, &tmp.path().join("pod"), &l).await.unwrap();
    let data = prepared.get("data").unwrap();
    assert_eq!(data.host_path, storage.join("pvc-1"));
    assert!(!data.read_only);
    assert_eq!(mode(&data.host_path), 0o777, "any container user may write a local-path volume");
    assert_eq!(prepared.get("ro").unwrap(), &PreparedVolume { host_path: local, read_only: true });

    let container: Container = serde_json::from_value(json!({"name": "app", "volumeMounts": [
        {"name": "data", "mountPath": "/data"}, {"name": "ro", "mountPath": "/disk"}]}))
    .unwrap();
    let mounts = container_mounts(&p, &container, &prepared, &[]).unwrap();
    assert_eq!(mounts[0].host_path, storage.join("pvc-1").to_str().unwrap());
    assert!(!mounts[0].readonly && mounts[1].readonly);

    // Deleting the pod's own volumes leaves the claim's data alone.
    cleanup_volumes(&tmp.path().join("pod")).unwrap();
    assert!(storage.join("pvc-1").is_dir());
}

#[tokio::test]
async fn claims_that_cannot_be_mounted_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let l = lookup()
        .with_claim("ns", claim("pending", None, "Pending"))
        .with_claim("ns", claim("lost", Some("gone"), "Bound"))
        .with_claim("ns", claim("block", Some("raw"), "Bound"))
        .with_volume(json!({"metadata": {"name": "raw"}, "spec": {"volumeMode": "Block", "local": {"path": "/dev"}}}))
        .with_claim("ns", claim("nfs", Some("share"), "Bound"))
        .with_volume(json!({"metadata": {"name": "share"}, "spec": {"nfs": {"server": "s", "path": "/"},
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"]}}));
    let cases = [
        ("pending", "PersistentVolumeClaim ns/pending is not bound to a PersistentVolume yet"),
        ("lost", "persistentvolume \"gone\" not found"),
        ("block", "block PersistentVolume volumes are not supported"),
        ("nfs", "PersistentVolume share of type nfs volumes are not supported"),
    ];
    for (name, want) in cases {
        let p = pod(json!([{"name": "v", "persistentVolumeClaim": {"claimName": name}}]));
        let err = prepare(&p, tmp.path(), &l).await.unwrap_err().to_string();
        assert!(err.contains(want), "{name}: got {err:?}, want {want:?}");
    }
}

#[tokio::test]
async fn sweep_removes_only_directories_of_deleted_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["pvc-kept", "pvc-gone", "unrelated"] {
        std::fs::create_dir_all(tmp.path().join(d).join("inner")).unwrap();
    }
    std::fs::write(tmp.path().join("pvc-file"), "x").unwrap();
    let l = lookup().with_volume(host_path_volume("pvc-kept", &tmp.path().join("pvc-kept"), true));
    let removed = claim::sweep(tmp.path(), &l).await;
    assert_eq!(removed, vec![tmp.path().join("pvc-gone")]);
    assert!(tmp.path().join("pvc-kept").is_dir() && tmp.path().join("unrelated").is_dir());
    assert!(tmp.path().join("pvc-file").is_file());
    // An API server that does not answer removes nothing.
    std::fs::create_dir_all(tmp.path().join("pvc-unknown")).unwrap();
    let away = FakeLookup { fail: Some("away".into()), ..FakeLookup::new() };
    assert!(claim::sweep(tmp.path(), &away).await.is_empty());
    let both = lookup().with_volume(host_path_volume("pvc-kept", tmp.path(), true)).with_volume(host_path_volume(
        "pvc-unknown",
        tmp.path(),
        true,
    ));
    assert!(claim::sweep(tmp.path(), &TokenCache::new(both)).await.is_empty());
    assert!(tmp.path().join("pvc-unknown").is_dir());
}
