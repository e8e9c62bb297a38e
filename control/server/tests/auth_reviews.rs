//! `kubectl auth can-i` against `skiff-control` with the real kubectl 1.32: the access
//! and rules reviews of authorization.k8s.io answered by the server's authorizer chain,
//! for the admin, for a user with a RoleBinding (through `--as`, impersonation), and
//! for a ServiceAccount token; SubjectAccessReview allowed to cluster-admin and refused
//! to an ordinary user, as upstream's RBAC does.

mod support;

use support::Server;

const RBAC: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: dev}
rules:
- {apiGroups: [""], resources: [pods, pods/log], verbs: [get, list, watch]}
- {apiGroups: [apps], resources: [statefulsets], verbs: [get], resourceNames: [db]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bot, namespace: dev}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bot-view, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: bot, namespace: dev}]
"#;

/// `kubectl auth can-i ARGS`: its answer ("yes"/"no") and whether it exited 0.
fn can_i(s: &Server, args: &[&str]) -> (String, bool) {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let out = s.run(&a);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer.starts_with("no"),
        "kubectl {a:?}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (answer, out.status.success())
}

fn yes(s: &Server, args: &[&str]) {
    assert_eq!(can_i(s, args), ("yes".to_string(), true), "can-i {args:?}");
}

fn no(s: &Server, args: &[&str]) {
    let (answer, ok) = can_i(s, args);
    assert!(answer.starts_with("no") && !ok, "can-i {args:?} answered {answer}");
}

#[test]
fn can_i_for_admin_role_bound_user_and_service_account() {
    let s = Server::start_with(&["--disable-controllers"]);
    s.apply("rbac.yaml", RBAC);

    yes(&s, &["create", "deployments"]);
    yes(&s, &["*", "*"]);
    yes(&s, &["delete", "nodes"]);
    let list = s.ok(&["auth", "can-i", "--list"]);
    assert!(list.contains("*.*") && list.contains("[*]"), "{list}");

    // A user with a RoleBinding, through impersonation (RBAC changes arrive by watch).
    s.wait_for(5, "alice's RoleBinding", || can_i(&s, &["list", "pods", "-n", "dev", "--as", "alice"]).1);
    yes(&s, &["get", "pods/log", "-n", "dev", "--as", "alice"]);
    yes(&s, &["get", "statefulsets.apps/db", "-n", "dev", "--as", "alice"]);
    no(&s, &["get", "statefulsets.apps/other", "-n", "dev", "--as", "alice"]);
    no(&s, &["delete", "pods", "-n", "dev", "--as", "alice"]);
    no(&s, &["list", "pods", "-n", "default", "--as", "alice"]);
    no(&s, &["list", "secrets", "-n", "dev", "--as", "alice"]);
    no(&s, &["create", "subjectaccessreviews.authorization.k8s.io", "--as", "alice"]);
    yes(&s, &["create", "selfsubjectaccessreviews.authorization.k8s.io", "--as", "alice"]);
    let rules = s.ok(&["auth", "can-i", "--list", "-n", "dev", "--as", "alice"]);
    let pods = rules.lines().find(|l| l.starts_with("pods ")).unwrap_or_else(|| panic!("no pods rule:\n{rules}"));
    assert!(pods.contains("[get list watch]"), "{rules}");
    assert!(rules.lines().any(|l| l.starts_with("statefulsets.apps") && l.contains("[db]")), "{rules}");
    assert!(rules.contains("selfsubjectaccessreviews.authorization.k8s.io"), "{rules}");
    let elsewhere = s.ok(&["auth", "can-i", "--list", "-n", "default", "--as", "alice"]);
    assert!(!elsewhere.lines().any(|l| l.starts_with("pods ")), "{elsewhere}");

    // A node: the node authorizer answers; its rules cannot all be listed.
    let node = ["--as", "system:node:n1", "--as-group", "system:nodes"];
    yes(&s, &[&["update", "nodes/n1", "--subresource=status"][..], &node].concat());
    no(&s, &[&["get", "secrets", "-n", "dev"][..], &node].concat());
    let out = s.run(&[&["auth", "can-i", "--list"][..], &node].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("incomplete"), "{err}");

    // A ServiceAccount, by its own token, and by impersonation.
    let token = s.ok(&["create", "token", "bot", "-n", "dev"]);
    let ca = s.dir.join("pki/ca.crt");
    let cfg = s.write(
        "bot.kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{}\", certificate-authority: {}}}}}]\n\
             users: [{{name: bot, user: {{token: {}}}}}]\ncontexts: [{{name: bot, context: {{cluster: c, user: bot, namespace: dev}}}}]\ncurrent-context: bot\n",
            s.port,
            ca.display(),
            token.trim()
        ),
    );
    let as_bot = |args: &[&str]| {
        let mut a = vec!["--kubeconfig", &cfg, "auth", "can-i"];
        a.extend_from_slice(args);
        let out = s.run(&a);
        (String::from_utf8_lossy(&out.stdout).trim().to_string(), out.status.success())
    };
    assert_eq!(as_bot(&["list", "configmaps"]), ("yes".into(), true));
    assert!(!as_bot(&["delete", "configmaps"]).1);
    assert!(!as_bot(&["list", "configmaps", "-n", "default"]).1);
    yes(&s, &["watch", "statefulsets", "-n", "dev", "--as", "system:serviceaccount:dev:bot"]);
    // Impersonation itself is authorized: the bot may not act as alice.
    let out = s.run(&["--kubeconfig", &cfg, "get", "pods", "--as", "alice"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("users \"alice\" is forbidden") && err.contains("cannot impersonate"),
        "{err}"
    );
}

#[test]
fn subject_access_reviews_need_rbac_and_answer_for_the_subject() {
    let s = Server::start_with(&["--disable-controllers"]);
    s.apply("rbac.yaml", RBAC);
    let sar = s.write(
        "sar.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  resourceAttributes: {namespace: dev, verb: list, resource: pods}\n",
    );
    s.wait_for(5, "alice's RoleBinding", || {
        s.json(&["create", "-f", &sar])["status"]["allowed"] == serde_json::json!(true)
    });
    let deny = s.write(
        "deny.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  groups: [devs]\n  resourceAttributes: {namespace: dev, verb: delete, resource: pods, name: web}\n",
    );
    let answer = s.json(&["create", "-f", &deny]);
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    assert_eq!(answer["spec"]["resourceAttributes"]["name"], "web", "the request comes back: {answer}");
    let urls = s.write(
        "urls.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  groups: [system:authenticated]\n  nonResourceAttributes: {path: /version, verb: get}\n",
    );
    assert_eq!(s.json(&["create", "-f", &urls])["status"]["allowed"], true);

    // An ordinary user may not ask about others.
    let err = s.fails(&["create", "-f", &sar, "--as", "alice"]);
    assert!(
        err.contains("subjectaccessreviews.authorization.k8s.io is forbidden: User \"alice\" cannot create resource \"subjectaccessreviews\""),
        "{err}"
    );
    // Nobody may ask without a subject or about two things at once.
    let bad = s.write(
        "bad.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  resourceAttributes: {verb: get, resource: pods}\n  nonResourceAttributes: {path: /healthz, verb: get}\n",
    );
    let err = s.fails(&["create", "-f", &bad]);
    assert!(err.contains("exactly one of nonResourceAttributes or resourceAttributes must be specified"), "{err}");
    assert!(err.contains("at least one of user or group must be specified"), "{err}");

    // LocalSubjectAccessReview: the namespace of the URL.
    let local = s.write(
        "local.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: LocalSubjectAccessReview\nmetadata: {namespace: dev}\nspec:\n  user: alice\n  resourceAttributes: {namespace: dev, verb: watch, resource: pods}\n",
    );
    assert_eq!(s.json(&["create", "-f", &local])["status"]["allowed"], true);
    let err = s.fails(&["create", "-f", &local, "-n", "default"]);
    assert!(err.contains("namespace"), "{err}");
    // They are not stored: no list, no get.
    let err = s.fails(&["get", "subjectaccessreviews"]);
    assert!(err.contains("not") || err.contains("405") || err.contains("MethodNotAllowed"), "{err}");
}
