//! User impersonation (`kubectl --as USER --as-group GROUP`): the `Impersonate-User`,
//! `Impersonate-Group` and `Impersonate-Uid` headers turn an authenticated request into
//! one of the named user, when the real user may `impersonate` each of them (users,
//! groups and serviceaccounts in the core group, uids in authentication.k8s.io), as
//! upstream's impersonation filter does.
//!
//! It only asks the authorizer; it must not grant anything of its own.

use http::HeaderMap;

use super::status::ApiError;
use crate::auth::authz::{Attributes, Authorizer, Decision};
use crate::auth::{AUTHENTICATED, UserInfo};

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect()
}

/// The user a request acts as: `user` itself without impersonation headers, else the
/// impersonated one, or 403 naming what `user` may not impersonate.
pub(super) fn impersonate(authz: &dyn Authorizer, user: UserInfo, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let target = values(headers, USER);
    let groups = values(headers, GROUP);
    let uids = values(headers, UID);
    let extras = headers.keys().any(|k| k.as_str().starts_with("impersonate-extra-"));
    let Some(name) = target.first().copied() else {
        if !groups.is_empty() || !uids.is_empty() || extras {
            return Err(ApiError::bad_request("requested impersonation of groups, uid or extras without a user"));
        }
        return Ok(user);
    };
    let check = |group: &str, resource: &str, namespace: Option<&str>, obj: &str| {
        let attrs = Attributes::Resource {
            verb: "impersonate".into(),
            group: group.into(),
            resource: resource.into(),
            subresource: None,
            namespace: namespace.map(String::from),
            name: Some(obj.into()),
        };
        match authz.authorize(&user, &attrs) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => {
                let res = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
                Err(ApiError::forbidden(format!("{res} \"{obj}\" is forbidden: {why}")))
            }
        }
    };
    let service_account = name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':'));
    match service_account {
        Some((ns, sa)) => check("", "serviceaccounts", Some(ns), sa)?,
        None => check("", "users", None, name)?,
    }
    for g in &groups {
        check("", "groups", None, g)?;
    }
    for u in &uids {
        check("authentication.k8s.io", "uids", None, u)?;
    }
    let mut new_groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    if let Some((ns, _)) = service_account {
        for g in ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")] {
            if !new_groups.contains(&g) {
                new_groups.push(g);
            }
        }
    }
    if name != "system:anonymous" && !new_groups.iter().any(|g| g == AUTHENTICATED) {
        new_groups.push(AUTHENTICATED.into());
    }
    tracing::debug!(user = %user.name, as_user = name, groups = ?new_groups, "impersonating");
    Ok(UserInfo { name: name.to_string(), groups: new_groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allows impersonating `users/alice` and `groups/devs` only.
    struct OnlyAlice;

    impl Authorizer for OnlyAlice {
        fn authorize(&self, _: &UserInfo, attrs: &Attributes) -> Decision {
            match attrs {
                Attributes::Resource { resource, name: Some(n), .. }
                    if (resource == "users" && n == "alice") || (resource == "groups" && n == "devs") =>
                {
                    Decision::Allow
                }
                _ => Decision::Deny("User \"admin\" cannot impersonate".into()),
            }
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn impersonation_needs_each_grant() {
        let admin = UserInfo { name: "admin".into(), groups: vec!["system:masters".into()] };
        assert_eq!(impersonate(&OnlyAlice, admin.clone(), &HeaderMap::new()).unwrap(), admin);
        let alice = impersonate(&OnlyAlice, admin.clone(), &headers(&[(USER, "alice"), (GROUP, "devs")])).unwrap();
        assert_eq!(alice, UserInfo { name: "alice".into(), groups: vec!["devs".into(), AUTHENTICATED.into()] });
        let e = impersonate(&OnlyAlice, admin.clone(), &headers(&[(USER, "bob")])).unwrap_err();
        assert!(e.to_status()["message"].as_str().unwrap().starts_with("users \"bob\" is forbidden"));
        let e = impersonate(&OnlyAlice, admin.clone(), &headers(&[(USER, "alice"), (GROUP, "system:masters")]));
        assert!(e.is_err(), "every group needs its own grant");
        assert!(impersonate(&OnlyAlice, admin, &headers(&[(GROUP, "devs")])).is_err(), "groups need a user");
    }
}
