//! Object metadata helpers: timestamps (RFC 3339 through `jiff`), uids, generated
//! names and name validation. Pure functions; they must not touch the store.

use jiff::Timestamp;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    Timestamp::now().as_second()
}

/// RFC 3339 in UTC with second precision, as `metav1.Time` serialises. Seconds beyond
/// what `jiff` represents (±9999 years; no clock or grace period reaches them) clamp.
pub fn format_time(secs: i64) -> String {
    let t = Timestamp::from_second(secs).unwrap_or(if secs < 0 { Timestamp::MIN } else { Timestamp::MAX });
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn now() -> String {
    format_time(unix_now())
}

/// Parses an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`) into Unix seconds.
pub fn parse_time(t: &str) -> Option<i64> {
    t.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// `kubectl`-style short age ("5s", "3m20s", "4h", "12d").
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s < 365 * 86_400 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (365 * 86_400)),
    }
}

pub fn age_of(obj: &serde_json::Value) -> String {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(|t| t.as_str())
        .and_then(parse_time)
        .map(|t| human_age(unix_now() - t))
        .unwrap_or_else(|| "<unknown>".into())
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `generateName` suffix: 5 characters from the alphabet Kubernetes uses (no vowels, no
/// look-alikes, so generated names never spell words or confuse readers).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().take(5).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// RFC 1123 subdomain (most object names): lowercase alphanumerics, '-' and '.', ≤ 253.
pub fn dns_subdomain_error(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let ok = name.split('.').all(|l| dns_label_error(l).is_none());
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into()
    })
}

/// RFC 1123 label (namespaces, services, container names): ≤ 63, no dots.
pub fn dns_label_error(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let valid = !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    (!valid).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trip() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20.123+01:00"), Some(1_700_000_000));
        let n = unix_now();
        assert_eq!(parse_time(&format_time(n)), Some(n));
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(200), "3m20s");
        assert_eq!(human_age(3 * 86_400), "3d0h");
    }

    #[test]
    fn names() {
        assert!(dns_subdomain_error("web.example-1").is_none());
        assert!(dns_subdomain_error("Web").is_some());
        assert!(dns_subdomain_error("-a").is_some());
        assert!(dns_label_error("a.b").is_some());
        assert_eq!(name_suffix().len(), 5);
    }
}
