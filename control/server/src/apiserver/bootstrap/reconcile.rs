//! Writing one bootstrap object: create it, or refresh an existing one while keeping
//! its identity (uid, creationTimestamp).

use serde_json::Value;

use super::super::object::{spec_part, to_bytes, to_obj};
use super::super::status::ApiResult;
use crate::store;

/// Creates `obj` at `key`, or refreshes what is stored there if it differs.
pub(super) async fn put(store: &dyn store::Store, key: &str, obj: &Value) -> ApiResult<()> {
    match store.create(key, to_bytes(obj)).await {
        Ok(_) => Ok(()),
        Err(store::Error::AlreadyExists { .. }) => {
            // Keep identity (uid, creationTimestamp) and only refresh the rest.
            let cur = store.get(key).await?.map(|kv| to_obj(&kv)).transpose()?;
            let mut o = obj.clone();
            if let Some(c) = cur {
                if spec_part(&c) == spec_part(obj) {
                    return Ok(());
                }
                o["metadata"] = c["metadata"].clone();
            }
            store.update(key, to_bytes(&o), None).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
