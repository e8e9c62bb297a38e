//! End-to-end tests of the LoadBalancer address allocator (`lbipam`) against a real
//! `skiff-control` started with `--service-lb-pool`, driven with kubectl as a user
//! would: Services get addresses of the pool, lowest free first, freed ones are given
//! again, a Service that stops being a LoadBalancer loses its address, a requested
//! address is honoured or refused with an event, exhaustion is told once and ends when
//! an address is freed, and addresses survive a restart.
//!
//! Every wait is bounded in time; every server is killed when its guard drops.

mod support;

use support::Server;

/// The EXTERNAL-IP column of `kubectl get svc NAME`.
fn external_ip(s: &Server, name: &str) -> String {
    let out = s.ok(&["get", "svc", name, "--no-headers"]);
    out.split_whitespace().nth(3).unwrap_or_default().to_string()
}

/// Waits until `kubectl get svc NAME` shows `want` as EXTERNAL-IP.
fn wait_external_ip(s: &Server, name: &str, want: &str) {
    s.wait_for(15, &format!("Service {name} to show EXTERNAL-IP {want}"), || external_ip(s, name) == want);
}

/// A LoadBalancer Service of one port, optionally asking for `requested`.
fn lb_manifest(name: &str, requested: Option<&str>) -> String {
    let ip = requested.map(|r| format!("  loadBalancerIP: {r}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n{ip}  selector: {{app: {name}}}\n  ports:\n  - port: 80\n"
    )
}

/// (reason, message) of the Warning events about Service `name`.
fn warnings(s: &Server, name: &str) -> Vec<(String, String)> {
    let events = s.json(&["get", "events"]);
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Warning" && e["involvedObject"]["name"] == name)
        .map(|e| (e["reason"].as_str().unwrap().to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn load_balancers_get_lowest_free_addresses_and_lose_them_when_no_longer_load_balancers() {
    let s = Server::start_with(&["--service-lb-pool", "192.168.240.0/29"]);
    s.ok(&["create", "service", "loadbalancer", "first", "--tcp=80:8080"]);
    // .0 is the pool's network address.
    wait_external_ip(&s, "first", "192.168.240.1");
    let svc = s.json(&["get", "svc", "first"]);
    assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    s.apply("second.yaml", &lb_manifest("second", None));
    wait_external_ip(&s, "second", "192.168.240.2");

    s.ok(&["delete", "svc", "first"]);
    s.apply("third.yaml", &lb_manifest("third", None));
    wait_external_ip(&s, "third", "192.168.240.1");

    s.ok(&["create", "service", "clusterip", "plain", "--tcp=80"]);
    // A LoadBalancer created after it is served only once `plain` was looked at (one worker, in order).
    s.apply("fourth.yaml", &lb_manifest("fourth", None));
    wait_external_ip(&s, "fourth", "192.168.240.3");
    assert_eq!(external_ip(&s, "plain"), "<none>");
    assert!(s.json(&["get", "svc", "plain"])["status"]["loadBalancer"].get("ingress").is_none());

    s.ok(&["patch", "svc", "second", "-p", r#"{"spec":{"type":"ClusterIP"}}"#]);
    wait_external_ip(&s, "second", "<none>");
    let svc = s.json(&["get", "svc", "second"]);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert!(svc["status"]["loadBalancer"].get("ingress").is_none(), "status cleared: {}", svc["status"]);
    // Its address went back to the pool.
    s.apply("fifth.yaml", &lb_manifest("fifth", None));
    wait_external_ip(&s, "fifth", "192.168.240.2");

    // Another controller's class is left alone.
    let other = lb_manifest("other", None)
        .replace("  type: LoadBalancer\n", "  type: LoadBalancer\n  loadBalancerClass: example.com/lb\n");
    s.apply("other.yaml", &other);
    s.apply("sixth.yaml", &lb_manifest("sixth", None));
    wait_external_ip(&s, "sixth", "192.168.240.4");
    assert_eq!(external_ip(&s, "other"), "<pending>");

    // Two Services showing one address: the one that claimed it later loses it.
    let claim = r#"{"status":{"loadBalancer":{"ingress":[{"ip":"192.168.240.1"}]}}}"#;
    s.ok(&["patch", "svc", "sixth", "--subresource=status", "--type=merge", "-p", claim]);
    s.wait_for(15, "an AddressConflict event about sixth", || {
        warnings(&s, "sixth").iter().any(|(reason, _)| reason == "AddressConflict")
    });
    wait_external_ip(&s, "sixth", "192.168.240.4");
    assert_eq!(external_ip(&s, "third"), "192.168.240.1");
}

#[test]
fn requested_addresses_exhaustion_and_restart() {
    // Two ranges of two usable addresses each: .1 and .2 of each /30.
    let mut s = Server::start_with(&["--service-lb-pool", "192.168.241.0/30,192.168.240.0/30"]);
    s.apply("a.yaml", &lb_manifest("a", Some("192.168.241.2")));
    wait_external_ip(&s, "a", "192.168.241.2");
    s.apply("b.yaml", &lb_manifest("b", None));
    wait_external_ip(&s, "b", "192.168.240.1");

    // Taken, outside the pool, the broadcast address: a Warning and no address.
    s.apply("taken.yaml", &lb_manifest("taken", Some("192.168.241.2")));
    s.apply("outside.yaml", &lb_manifest("outside", Some("10.9.9.9")));
    s.apply("broadcast.yaml", &lb_manifest("broadcast", Some("192.168.240.3")));
    for name in ["taken", "outside", "broadcast"] {
        s.wait_for(15, &format!("a Warning event about {name}"), || {
            warnings(&s, name).iter().any(|(reason, _)| reason == "AllocationFailed")
        });
        assert_eq!(external_ip(&s, name), "<pending>");
    }
    assert!(warnings(&s, "outside")[0].1.contains("not a usable address"), "{:?}", warnings(&s, "outside"));
    s.ok(&["delete", "svc", "outside", "broadcast"]);

    s.apply("c.yaml", &lb_manifest("c", None));
    wait_external_ip(&s, "c", "192.168.240.2");
    s.apply("d.yaml", &lb_manifest("d", None));
    wait_external_ip(&s, "d", "192.168.241.1");
    // The pool is used up.
    s.apply("e.yaml", &lb_manifest("e", None));
    s.wait_for(15, "exhaustion to be told to e", || !warnings(&s, "e").is_empty());
    // A change of the waiting Service makes it look again, but not tell again.
    s.ok(&["label", "svc", "e", "looked-at=again"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let told = warnings(&s, "e");
    assert_eq!(told.len(), 1, "told once: {told:?}");
    assert_eq!(told[0].0, "AllocationFailed");
    assert!(told[0].1.contains("192.168.240.0/30,192.168.241.0/30"), "{}", told[0].1);
    assert_eq!(external_ip(&s, "e"), "<pending>");

    // A freed address goes to the Service waiting for any; the one waiting for a
    // particular address gets it once that one is freed.
    s.ok(&["delete", "svc", "b"]);
    wait_external_ip(&s, "e", "192.168.240.1");
    assert_eq!(external_ip(&s, "taken"), "<pending>");
    s.ok(&["delete", "svc", "a"]);
    wait_external_ip(&s, "taken", "192.168.241.2");

    // A restart keeps every address where it is; the next one is the freed one.
    s.restart();
    s.ok(&["delete", "svc", "d"]);
    s.apply("f.yaml", &lb_manifest("f", None));
    wait_external_ip(&s, "f", "192.168.241.1");
    for (name, ip) in [("taken", "192.168.241.2"), ("c", "192.168.240.2"), ("e", "192.168.240.1")] {
        assert_eq!(external_ip(&s, name), ip, "{name} kept its address");
    }
}

#[test]
fn bad_pools_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    for (pool, why) in [
        ("10.96.5.0/24", "overlaps --service-cidr"),
        ("10.244.0.0/28", "overlaps --cluster-cidr"),
        ("192.168.0.0/24,192.168.0.128/25", "overlap"),
        ("192.168.0.1/24", "host bits are set"),
        ("192.168.0.0/31", "prefix length must be at most 30"),
        ("192.168.0.0", "invalid value"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff-control"))
            .arg("--data-dir")
            .arg(tmp.path())
            .args(["--bind-address", "127.0.0.1", "--port", &support::free_port().to_string()])
            .args(["--service-lb-pool", pool])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "--service-lb-pool {pool} accepted");
        assert!(text.contains(why), "--service-lb-pool {pool}: want {why:?} in {text}");
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_skiff-control")).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--service-lb-pool <CIDR[,CIDR...]>"));
}
