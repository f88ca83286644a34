//! [`MemStore`]: an object store in memory, for unit tests of the code above this tier.

use crate::{check_key, check_prefix, content_etag, Cond, ObjectMeta, ObjectStore, StoreError};
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// An in-memory [`ObjectStore`]; ETags are [`content_etag`]s.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ObjectStore for MemStore {
    fn describe(&self) -> String {
        "mem://".to_string()
    }

    fn put(&self, key: &str, data: &[u8], cond: Cond) -> Result<String, StoreError> {
        check_key(key)?;
        let mut objects = self.objects.lock();
        let current = objects.get(key).map(|d| content_etag(d));
        let allowed = match &cond {
            Cond::None => true,
            Cond::IfAbsent => current.is_none(),
            Cond::IfMatch(etag) => current.as_deref() == Some(etag.as_str()),
        };
        if !allowed {
            return Err(StoreError::precondition(key));
        }
        objects.insert(key.to_string(), data.to_vec());
        Ok(content_etag(data))
    }

    fn get(&self, key: &str) -> Result<(Vec<u8>, String), StoreError> {
        check_key(key)?;
        let objects = self.objects.lock();
        let data = objects.get(key).ok_or_else(|| StoreError::not_found(key))?;
        Ok((data.clone(), content_etag(data)))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let (data, _) = self.get(key)?;
        slice_range(key, &data, offset, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        let objects = self.objects.lock();
        Ok(objects.get(key).map(|d| ObjectMeta { len: d.len() as u64, etag: content_etag(d) }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        check_prefix(prefix)?;
        let objects = self.objects.lock();
        let keys = objects.range(prefix.to_string()..).map(|(k, _)| k);
        Ok(keys.take_while(|k| k.starts_with(prefix)).cloned().collect())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.objects.lock().remove(key);
        Ok(())
    }
}

/// Exactly `len` bytes of `data` at `offset`, or [`StoreError::Corrupt`] if it is shorter.
pub(crate) fn slice_range(key: &str, data: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
    let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX).min(data.len());
    let got = &data[start..end];
    if (got.len() as u64) < len {
        return Err(StoreError::short_read(key, offset, len, got.len() as u64));
    }
    Ok(got.to_vec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_store_conforms() {
        crate::conformance(&super::MemStore::new());
    }
}
