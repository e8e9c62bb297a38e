//! Taints and tolerations: whether a toleration tolerates a taint, with upstream's rules
//! (`k8s.io/api/core/v1` `Toleration.ToleratesTaint`), used by the scheduler (which pods
//! may land where), the DaemonSet controller (which nodes get a daemon pod) and node
//! lifecycle (which pods are evicted from a NotReady node).

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Does `toleration` tolerate `taint`? An empty effect matches every effect and an empty
/// key every key; operator `Exists` then matches any value, `Equal` (the default, also
/// when empty) needs the same value (absent = ""). Any other operator matches nothing.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Does any of `tolerations` tolerate `taint`?
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn toleration_rules() {
        let taint = |v| serde_json::from_value::<Taint>(v).unwrap();
        let t = taint(json!({"key": "k", "value": "v", "effect": "NoSchedule"}));
        let no_value = taint(json!({"key": "k", "effect": "NoSchedule"}));
        let cases = [
            (json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}), &t, true),
            (json!({"key": "k", "operator": "Equal", "value": "w"}), &t, false),
            (json!({"key": "k", "value": "v"}), &t, true),
            (json!({"key": "k", "value": "other"}), &t, false),
            (json!({"key": "k"}), &t, false),
            (json!({"key": "k"}), &no_value, true),
            (json!({"key": "k", "operator": "Exists"}), &t, true),
            (json!({"key": "k", "operator": "Exists", "value": "ignored"}), &t, true),
            (json!({"key": "other", "operator": "Exists"}), &t, false),
            (json!({"operator": "Exists"}), &t, true),
            (json!({"operator": "Exists", "effect": "NoExecute"}), &t, false),
            (json!({"key": "k", "operator": "Exists", "effect": ""}), &t, true),
            (json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"}), &t, true),
            (json!({"key": "k", "operator": "Exists", "effect": "PreferNoSchedule"}), &t, false),
            // Equal with an empty key matches every key (upstream's rule; validation
            // only lets it through with operator Exists, but a stored object may differ).
            (json!({"value": "v"}), &t, true),
            (json!({"value": "w"}), &t, false),
            (json!({"key": "k", "operator": "Bogus"}), &t, false),
            (json!({"key": "k", "operator": "Gt", "value": "1"}), &t, false),
        ];
        for (tol, taint, want) in cases {
            let toleration: Toleration = serde_json::from_value(tol.clone()).unwrap();
            assert_eq!(tolerates(&toleration, taint), want, "{tol}");
        }
    }

    #[test]
    fn any_of_several() {
        let t = Taint { key: "k".into(), effect: "NoSchedule".into(), ..Default::default() };
        let other = Toleration { key: Some("x".into()), operator: Some("Exists".into()), ..Default::default() };
        let this = Toleration { key: Some("k".into()), operator: Some("Exists".into()), ..Default::default() };
        assert!(!tolerated(&[], &t));
        assert!(!tolerated(std::slice::from_ref(&other), &t));
        assert!(tolerated(&[other, this], &t));
    }
}
