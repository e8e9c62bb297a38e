//! Two replicas of skiff-control on one etcd: exactly one holds the controller-manager
//! Lease and runs the scheduler and controllers; when it dies the other takes the Lease
//! over and scheduling goes on. Real etcd, real kubectl, real processes.

mod support;

use std::time::Duration;

use support::etcd::Etcd;
use support::{Server, node_manifest, wait_for};

const LEASE: &str = "skiff-controller-manager";

fn holder(s: &Server) -> String {
    let out = s.run(&["get", "lease", "-n", "kube-system", LEASE, "-o", "jsonpath={.spec.holderIdentity}"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn identity_of(s: &Server) -> String {
    let id = std::fs::read_to_string(s.dir.join("identity")).expect("the server keeps its identity in its data dir");
    id.trim().to_string()
}

fn pod(name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n")
}

fn node_of(s: &Server, pod: &str) -> String {
    s.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

#[test]
fn one_leader_at_a_time_and_failover() {
    let etcd = Etcd::start(1);
    let url = etcd.url(0);
    let a = Server::start_with(&["--etcd-servers", &url]);
    let b = Server::start_with(&["--etcd-servers", &url]);
    let ids = [identity_of(&a), identity_of(&b)];
    assert_ne!(ids[0], ids[1], "replicas need distinct identities");

    wait_for(Duration::from_secs(30), "a leader", || ids.iter().any(|id| holder(&a).ends_with(id.as_str())));
    let leader_is_a = holder(&a).ends_with(ids[0].as_str());
    let (mut leader, follower, follower_id) = if leader_is_a { (a, b, &ids[1]) } else { (b, a, &ids[0]) };
    // Both replicas serve the API; only the leader runs controllers.
    assert_eq!(holder(&leader), holder(&follower), "both see the same Lease");
    assert!(leader.log().contains("became leader"), "{}", leader.log());
    assert!(!follower.log().contains("became leader"), "the follower must not lead: {}", follower.log());

    follower.apply("node.yaml", &node_manifest("n1", "4", "8Gi", "", ""));
    follower.apply("p1.yaml", &pod("before"));
    wait_for(Duration::from_secs(20), "the leader's scheduler to bind a pod", || node_of(&follower, "before") == "n1");

    // The leader dies without releasing the Lease: the follower takes over once it lapses.
    leader.stop();
    wait_for(Duration::from_secs(45), "the follower to take the Lease", || {
        holder(&follower).ends_with(follower_id.as_str())
    });
    assert!(follower.log().contains("became leader"));
    follower.apply("p2.yaml", &pod("after"));
    wait_for(Duration::from_secs(20), "the new leader's scheduler to bind a pod", || {
        node_of(&follower, "after") == "n1"
    });
    let transitions =
        follower.ok(&["get", "lease", "-n", "kube-system", LEASE, "-o", "jsonpath={.spec.leaseTransitions}"]);
    assert_eq!(transitions.trim(), "1", "one handover");
    drop(etcd);
}
