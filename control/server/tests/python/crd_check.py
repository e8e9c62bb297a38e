"""Checks CustomResourceDefinitions and custom objects with the official Python
`kubernetes` client.

Run by control/server/tests/python_client.rs as
`python crd_check.py <admin kubeconfig>` against a fresh server. The CRD goes through
the typed ApiextensionsV1Api (so its response shapes are checked by the client's
models); its objects through CustomObjectsApi: create with defaults, 422 with field
paths, list, watch, merge and JSON patches, the status and scale subresources, delete,
and the CRD's deletion taking its objects.

Prints one line per check ("ok - ..." or "FAIL - ...") and exits non-zero if any
check failed. Every wait is bounded.
"""

import sys
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from checks import check, expect_status, summary

GROUP, VERSION, PLURAL, NS = "example.org", "v1", "widgets", "default"


def wait_until(what, fn, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def crd_body():
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "string", "enum": ["small", "large"]},
                    "replicas": {"type": "integer", "minimum": 0, "default": 1},
                    "color": {"type": "string", "default": "blue"},
                },
            },
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
                    },
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "string", "jsonPath": ".spec.size"}
                    ],
                }
            ],
        },
    }


def widget(name, **spec):
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def main():
    config.load_kube_config(config_file=sys.argv[1])
    ext = client.ApiextensionsV1Api()
    co = client.CustomObjectsApi()

    @check("crd: create through the typed client, Established")
    def _():
        created = ext.create_custom_resource_definition(crd_body())
        assert created.spec.names.kind == "Widget", created.spec.names

        def established():
            c = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
            conds = (c.status and c.status.conditions) or []
            return any(x.type == "Established" and x.status == "True" for x in conds)

        wait_until("Established", established)
        listed = ext.list_custom_resource_definition()
        assert [c.metadata.name for c in listed.items] == [f"{PLURAL}.{GROUP}"]

    @check("custom objects: create with defaults, get, list, 422 with field paths")
    def _():
        def created():
            try:
                return co.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("w1", size="small"))
            except ApiException as e:
                if e.status == 404:  # served a moment after Established
                    return None
                raise

        obj = None
        deadline = time.time() + 10
        while obj is None and time.time() < deadline:
            obj = created()
            time.sleep(0.1 if obj is None else 0)
        assert obj["spec"] == {"size": "small", "replicas": 1, "color": "blue"}, obj
        got = co.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w1")
        assert got["metadata"]["uid"] == obj["metadata"]["uid"]
        e = expect_status(422, co.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, widget("w2", size="huge"))
        assert "spec.size" in e.body and "Unsupported value" in e.body, e.body
        e = expect_status(422, co.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, widget("w3"))
        assert "spec.size" in e.body and "Required value" in e.body, e.body
        co.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("w4", size="large", replicas=2))
        listed = co.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
        assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["w1", "w4"], listed
        assert listed["kind"] == "WidgetList", listed["kind"]
        everywhere = co.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        assert len(everywhere["items"]) == 2

    @check("custom objects: merge and JSON patches, status and scale subresources")
    def _():
        p = co.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w1", {"spec": {"color": "red"}})
        assert p["spec"]["color"] == "red", p
        p = co.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "w1", [{"op": "replace", "path": "/spec/size", "value": "large"}],
            _content_type="application/json-patch+json",
        )
        assert p["spec"]["size"] == "large", p
        s = co.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "w1", {"status": {"replicas": 1}})
        assert s["status"] == {"replicas": 1}, s
        scale = co.patch_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "w1", {"spec": {"replicas": 4}})
        assert scale["spec"]["replicas"] == 4, scale
        scale = co.get_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "w1")
        assert scale["kind"] == "Scale" and scale["status"]["replicas"] == 1, scale
        assert co.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w1")["spec"]["replicas"] == 4

    @check("custom objects: watch sees ADDED, MODIFIED, DELETED")
    def _():
        rv = co.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"]
        co.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, widget("w5", size="small"))
        co.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w5", {"spec": {"color": "green"}})
        co.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "w5")
        seen = []
        w = watch.Watch()
        for ev in w.stream(
            co.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version=rv, timeout_seconds=3
        ):
            seen.append((ev["type"], ev["object"]["metadata"]["name"]))
            if len(seen) == 3:
                w.stop()
        assert seen == [("ADDED", "w5"), ("MODIFIED", "w5"), ("DELETED", "w5")], seen

    @check("crd: deleting it deletes its objects and stops serving them")
    def _():
        ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")

        def gone():
            try:
                ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
                return False
            except ApiException as e:
                return e.status == 404

        wait_until("the CRD to be gone", gone)
        expect_status(404, co.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL)

    return summary()


if __name__ == "__main__":
    sys.exit(main())
