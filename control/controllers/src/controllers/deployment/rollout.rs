//! The rollout arithmetic of a Deployment: how far maxSurge and maxUnavailable let the
//! new ReplicaSet grow and the old ones shrink. Pure functions.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// An int, or a percentage of `total` rounded up (`round_up`) or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            let x = pct * i64::from(total);
            let v = if round_up { (x + 99).div_euclid(100) } else { x.div_euclid(100) };
            i32::try_from(v).ok()
        }
    }
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) for `replicas`; both zero
/// would deadlock a rollout, so maxUnavailable becomes 1 then, as in Kubernetes.
pub fn resolve_fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    replicas: i32,
) -> Result<(i32, i32), (&'static str, String)> {
    let pct25 = IntOrString::String("25%".into());
    let s = surge.unwrap_or(&pct25);
    let u = unavailable.unwrap_or(&pct25);
    let show = |v: &IntOrString| match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    };
    let surge = scaled_value(s, replicas, true).ok_or_else(|| ("maxSurge", show(s)))?.max(0);
    let unavailable = scaled_value(u, replicas, false).ok_or_else(|| ("maxUnavailable", show(u)))?.max(0);
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// The replicas the new ReplicaSet may have during a rolling update: up to `replicas`,
/// without the total of all ReplicaSets' desired pods exceeding `replicas + max_surge`.
pub fn new_rs_replicas(replicas: i32, max_surge: i32, total_spec: i32, new_spec: i32) -> i32 {
    let max_total = replicas + max_surge;
    if total_spec >= max_total {
        return new_spec;
    }
    let room = max_total - total_spec;
    new_spec + room.min((replicas - new_spec).max(0))
}

/// New desired replicas of the old ReplicaSets (given oldest first as `(spec,
/// available)`) during a rolling update: first drop their unavailable pods, then
/// available ones, never taking availability below `replicas - max_unavailable`.
pub fn old_rs_scale_down(
    replicas: i32,
    max_unavailable: i32,
    new_spec: i32,
    new_available: i32,
    old: &[(i32, i32)],
) -> Vec<i32> {
    let mut out: Vec<i32> = old.iter().map(|&(s, _)| s).collect();
    let old_total: i32 = out.iter().sum();
    if old_total == 0 {
        return out;
    }
    let all = new_spec + old_total;
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_spec - new_available).max(0);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return out;
    }
    // Unhealthy old pods first: removing them costs no availability.
    let mut cleaned = 0;
    for (i, &(_, avail)) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (out[i] - avail).max(0);
        let n = unhealthy.min(max_scaled_down - cleaned);
        out[i] -= n;
        cleaned += n;
    }
    let available: i32 = new_available + old.iter().zip(&out).map(|(&(_, a), &s)| a.min(s)).sum::<i32>();
    let budget = available - min_available;
    let mut scaled = 0;
    for s in out.iter_mut() {
        if scaled >= budget {
            break;
        }
        let n = (*s).min(budget - scaled);
        *s -= n;
        scaled += n;
    }
    out
}
