"""Checks skiff-control with the official Python `kubernetes` client.

Run by control/server/tests/python_client.rs as
`python client_check.py <admin kubeconfig>` against a fresh server. Covers CRUD of
Namespaces, ConfigMaps, Services, Deployments and Pods, label and field selectors,
paging with limit/continue, a watch, and the status codes of common errors. The Python
client deserialises every response into its typed models, so this also checks that
our responses have the shapes it expects.

Prints one line per check ("ok - ..." or "FAIL - ...") and exits non-zero if any
check failed. Every wait is bounded (watch timeouts, thread joins).
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from checks import check, expect_status, summary


def wait_gone(ns):
    """A deleted namespace is Terminating until the namespace controller has removed
    its content; then it goes."""
    for _ in range(150):
        try:
            v1 = client.CoreV1Api()
            v1.read_namespace(ns)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        time.sleep(0.2)
    raise AssertionError(f"namespace {ns} still exists 30 s after its deletion")


def replace_retrying(read, change, replace, attempts=10):
    """Read, change, replace; on 409 (a controller wrote the object in between) read
    again, as client-go's RetryOnConflict does."""
    for attempt in range(attempts):
        obj = read()
        change(obj)
        try:
            return replace(obj)
        except ApiException as e:
            if e.status != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.1)

NS = "py-check"

def names(items):
    return sorted(i.metadata.name for i in items)


def cm(name, labels=None, data=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        data=data or {},
    )


def main():
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()
    apps = client.AppsV1Api()

    @check("namespace: create, read, replace, patch, list by label, delete")
    def _():
        ns = v1.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NS, labels={"team": "py"}))
        )
        assert ns.metadata.name == NS and ns.metadata.uid, ns.metadata
        got = v1.read_namespace(NS)
        assert got.metadata.labels["team"] == "py", got.metadata.labels
        assert got.status.phase == "Active", got.status
        got.metadata.labels["stage"] = "replaced"
        rep = v1.replace_namespace(NS, got)
        assert rep.metadata.labels["stage"] == "replaced"
        assert int(rep.metadata.resource_version) > int(got.metadata.resource_version)
        pat = v1.patch_namespace(NS, {"metadata": {"labels": {"stage": "patched"}}})
        assert pat.metadata.labels["stage"] == "patched", pat.metadata.labels
        assert pat.metadata.labels["team"] == "py", pat.metadata.labels
        listed = v1.list_namespace(label_selector="team=py")
        assert names(listed.items) == [NS], names(listed.items)
        # A second namespace to delete, so the one the other checks use stays.
        v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py-gone")))
        v1.delete_namespace("py-gone")
        wait_gone("py-gone")

    @check("configmap: create, read, replace, strategic/merge/json patch, delete")
    def _():
        created = v1.create_namespaced_config_map(NS, cm("crud", {"app": "crud"}, {"k": "v1"}))
        assert created.data == {"k": "v1"} and created.metadata.namespace == NS
        got = v1.read_namespaced_config_map("crud", NS)
        assert got.metadata.resource_version == created.metadata.resource_version
        got.data["k"] = "v2"
        rep = v1.replace_namespaced_config_map("crud", NS, got)
        assert rep.data == {"k": "v2"}, rep.data
        # A dict body goes out as a strategic merge patch.
        p = v1.patch_namespaced_config_map("crud", NS, {"data": {"s": "strategic"}})
        assert p.data == {"k": "v2", "s": "strategic"}, p.data
        p = v1.patch_namespaced_config_map(
            "crud", NS, {"data": {"s": None, "m": "merge"}}, _content_type="application/merge-patch+json"
        )
        assert p.data == {"k": "v2", "m": "merge"}, p.data
        # A list body goes out as a JSON patch.
        p = v1.patch_namespaced_config_map("crud", NS, [{"op": "replace", "path": "/data/k", "value": "v3"}])
        assert p.data == {"k": "v3", "m": "merge"}, p.data
        # Deletes of most kinds answer with a Status, which this client returns as a dict.
        st = v1.delete_namespaced_config_map("crud", NS)
        assert st["kind"] == "Status" and st["status"] == "Success", st
        assert st["details"]["name"] == "crud" and st["details"]["uid"] == created.metadata.uid, st
        expect_status(404, v1.read_namespaced_config_map, "crud", NS)

    @check("service: create assigns a ClusterIP, read, replace keeps it, patch, delete")
    def _():
        svc = client.V1Service(
            metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
            spec=client.V1ServiceSpec(
                selector={"app": "web"},
                ports=[client.V1ServicePort(name="http", port=80, target_port=8080)],
            ),
        )
        created = v1.create_namespaced_service(NS, svc)
        ip = created.spec.cluster_ip
        assert ip and ip != "None" and ip.count(".") == 3, created.spec
        assert created.spec.type == "ClusterIP", created.spec.type
        got = v1.read_namespaced_service("web", NS)
        assert got.spec.cluster_ip == ip
        assert got.spec.ports[0].target_port == 8080, got.spec.ports
        got.spec.ports[0].port = 81
        rep = v1.replace_namespaced_service("web", NS, got)
        assert rep.spec.cluster_ip == ip and rep.spec.ports[0].port == 81, rep.spec
        pat = v1.patch_namespaced_service("web", NS, {"metadata": {"labels": {"patched": "yes"}}})
        assert pat.metadata.labels == {"app": "web", "patched": "yes"}, pat.metadata.labels
        assert pat.spec.cluster_ip == ip
        v1.delete_namespaced_service("web", NS)
        expect_status(404, v1.read_namespaced_service, "web", NS)

    @check("deployment (apps/v1): create, read, replace, patch, scale, delete")
    def _():
        labels = {"app": "dep"}
        dep = client.V1Deployment(
            metadata=client.V1ObjectMeta(name="dep", labels=labels),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="c", image="nginx:1.27")]
                    ),
                ),
            ),
        )
        created = apps.create_namespaced_deployment(NS, dep)
        assert created.api_version == "apps/v1" and created.kind == "Deployment", created.kind
        assert created.metadata.generation == 1, created.metadata.generation
        # The Deployment controller writes status and the revision annotation right
        # after the create, so the read-modify-replace may meet a 409.
        def more(d):
            d.spec.replicas = 2
        rep = replace_retrying(
            lambda: apps.read_namespaced_deployment("dep", NS), more,
            lambda d: apps.replace_namespaced_deployment("dep", NS, d))
        assert rep.spec.replicas == 2 and rep.metadata.generation == 2, (rep.spec.replicas, rep.metadata)
        pat = apps.patch_namespaced_deployment("dep", NS, {"spec": {"replicas": 3}})
        assert pat.spec.replicas == 3, pat.spec.replicas
        scale = apps.read_namespaced_deployment_scale("dep", NS)
        assert scale.spec.replicas == 3, scale.spec
        st = apps.delete_namespaced_deployment("dep", NS)
        assert st["status"] == "Success" and st["details"]["kind"] == "deployments", st
        expect_status(404, apps.read_namespaced_deployment, "dep", NS)

    @check("pod: create, read, replace, patch, delete")
    def _():
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="crud-pod", labels={"app": "crud-pod"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1.36")]),
        )
        created = v1.create_namespaced_pod(NS, pod)
        assert created.status.phase == "Pending", created.status
        # The scheduler records PodScheduled=False on the unbound pod meanwhile.
        def label(p):
            p.metadata.labels["replaced"] = "yes"
        rep = replace_retrying(
            lambda: v1.read_namespaced_pod("crud-pod", NS), label,
            lambda p: v1.replace_namespaced_pod("crud-pod", NS, p))
        assert rep.metadata.labels["replaced"] == "yes"
        pat = v1.patch_namespaced_pod("crud-pod", NS, {"metadata": {"annotations": {"a": "b"}}})
        assert pat.metadata.annotations == {"a": "b"}, pat.metadata.annotations
        # An unbound pod has no kubelet to wait for, so it goes at once.
        gone = v1.delete_namespaced_pod("crud-pod", NS)
        assert isinstance(gone, client.V1Pod) and gone.metadata.name == "crud-pod", gone
        expect_status(404, v1.read_namespaced_pod, "crud-pod", NS)

    @check("list: label selectors (equality, in, notin, !key)")
    def _():
        v1.create_namespaced_config_map(NS, cm("sel-a", {"app": "a", "tier": "front"}))
        v1.create_namespaced_config_map(NS, cm("sel-b", {"app": "b", "tier": "back"}))
        v1.create_namespaced_config_map(NS, cm("sel-c", {"app": "c"}))
        cases = {
            "app=a": ["sel-a"],
            "app==b": ["sel-b"],
            "app!=a,app": ["sel-b", "sel-c"],
            "app in (a,b)": ["sel-a", "sel-b"],
            "app notin (a,b),app": ["sel-c"],
            "app,!tier": ["sel-c"],
            "tier": ["sel-a", "sel-b"],
            "app=a,tier=back": [],
        }
        for sel, want in cases.items():
            got = names(v1.list_namespaced_config_map(NS, label_selector=sel).items)
            assert got == want, f"{sel!r}: got {got}, want {want}"
        expect_status(400, v1.list_namespaced_config_map, NS, label_selector="app in (a")

    @check("list: field selectors (metadata.name, pod status.phase and spec.nodeName)")
    def _():
        got = names(v1.list_namespaced_config_map(NS, field_selector="metadata.name=sel-b").items)
        assert got == ["sel-b"], got
        got = names(
            v1.list_namespaced_config_map(NS, field_selector="metadata.name!=sel-b", label_selector="app").items
        )
        assert got == ["sel-a", "sel-c"], got
        for name, node in [("fs-unbound", None), ("fs-bound", "node-x")]:
            v1.create_namespaced_pod(
                NS,
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name=name, labels={"fs": "yes"}),
                    spec=client.V1PodSpec(
                        node_name=node, containers=[client.V1Container(name="c", image="busybox:1.36")]
                    ),
                ),
            )
        got = names(v1.list_namespaced_pod(NS, field_selector="spec.nodeName=node-x").items)
        assert got == ["fs-bound"], got
        got = names(v1.list_namespaced_pod(NS, field_selector="spec.nodeName=", label_selector="fs").items)
        assert got == ["fs-unbound"], got
        got = names(v1.list_namespaced_pod(NS, field_selector="status.phase=Pending", label_selector="fs").items)
        assert got == ["fs-bound", "fs-unbound"], got
        got = names(v1.list_namespaced_pod(NS, field_selector="status.phase=Running").items)
        assert got == [], got
        got = names(v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-x,status.phase=Pending").items)
        assert got == ["fs-bound"], got
        expect_status(400, v1.list_namespaced_config_map, NS, field_selector="data.k=v")

    @check("list: limit and continue page through everything once")
    def _():
        want = [f"page-{i}" for i in range(7)]
        for n in want:
            v1.create_namespaced_config_map(NS, cm(n, {"paged": "yes"}))
        seen, token, pages = [], None, 0
        while pages < 20:  # bounded: 7 items in pages of 3 need 3
            page = v1.list_namespaced_config_map(NS, label_selector="paged=yes", limit=3, _continue=token)
            pages += 1
            assert len(page.items) <= 3, len(page.items)
            seen += [i.metadata.name for i in page.items]
            token = page.metadata._continue
            if not token:
                break
        assert pages == 3, pages
        assert sorted(seen) == want and len(seen) == len(set(seen)), seen
        expect_status(400, v1.list_namespaced_config_map, NS, limit=1, _continue="not-a-token")

    @check("watch: ADDED, MODIFIED, DELETED from a resourceVersion")
    def _():
        rv = v1.list_namespaced_config_map(NS).metadata.resource_version
        errors = []

        def writer():
            try:
                time.sleep(0.5)
                v1.create_namespaced_config_map(NS, cm("watched", {"w": "yes"}, {"n": "1"}))
                v1.patch_namespaced_config_map("watched", NS, {"data": {"n": "2"}})
                v1.delete_namespaced_config_map("watched", NS)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        w = watch.Watch()
        events = []
        deadline = time.monotonic() + 20
        for ev in w.stream(v1.list_namespaced_config_map, NS, resource_version=rv, timeout_seconds=15):
            obj = ev["object"]
            assert isinstance(obj, client.V1ConfigMap), type(obj)
            if obj.metadata.name == "watched":
                events.append((ev["type"], dict(obj.data or {})))
            if ev["type"] == "DELETED" or time.monotonic() > deadline:
                w.stop()
        t.join(timeout=10)
        assert not errors, errors
        types = [e[0] for e in events]
        assert types == ["ADDED", "MODIFIED", "DELETED"], events
        assert events[1][1] == {"n": "2"}, events

    @check("errors: 404, 409 exists, 409 stale resourceVersion, 422 invalid name")
    def _():
        e = expect_status(404, v1.read_namespaced_config_map, "nope", NS)
        assert "not found" in e.body, e.body
        expect_status(404, v1.read_namespace, "no-such-namespace")
        v1.create_namespaced_config_map(NS, cm("dup"))
        e = expect_status(409, v1.create_namespaced_config_map, NS, cm("dup"))
        assert e.reason == "Conflict" and "AlreadyExists" in e.body, e.body
        stale = v1.read_namespaced_config_map("dup", NS)
        v1.patch_namespaced_config_map("dup", NS, {"data": {"x": "1"}})
        stale.data = {"x": "stale"}
        e = expect_status(409, v1.replace_namespaced_config_map, "dup", NS, stale)
        assert '"reason":"Conflict"' in e.body.replace(" ", ""), e.body
        e = expect_status(422, v1.create_namespaced_config_map, NS, cm("Not_A_Valid_Name"))
        assert "Invalid" in e.body, e.body
        expect_status(404, v1.create_namespaced_config_map, "no-such-namespace", cm("x"))

    # Last, so the checks above run in a namespace that exists.
    @check("namespace: deleting removes what is in it")
    def _():
        v1.delete_namespace(NS)
        wait_gone(NS)
        assert v1.list_namespaced_config_map(NS).items == []

    return summary()


if __name__ == "__main__":
    sys.exit(main())
