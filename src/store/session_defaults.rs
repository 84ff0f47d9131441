//! Per-session defaults of one kind (prompt compression, the semantic cache), applied when a
//! request names none, saved as one JSON map in the database's settings.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Store, StoreError};

pub struct SessionDefaults<T> {
    map: Mutex<BTreeMap<String, T>>,
    /// For sessions with none of their own (a server setting).
    fallback: Mutex<Option<T>>,
    store: Option<Store>,
    key: &'static str,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Clone + Serialize + DeserializeOwned> SessionDefaults<T> {
    /// The defaults saved under `key` (none when there is no database or nothing was saved).
    pub async fn open(store: Option<Store>, key: &'static str) -> Self {
        let mut map = BTreeMap::new();
        if let Some(db) = &store {
            match db.settings_get(key).await {
                Ok(Some(json)) => match serde_json::from_str(&json) {
                    Ok(saved) => map = saved,
                    Err(e) => {
                        tracing::warn!(error = %e, key, "session defaults not understood; left as saved")
                    }
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, key, "session defaults not read"),
            }
        }
        Self {
            map: Mutex::new(map),
            fallback: Mutex::new(None),
            store,
            key,
        }
    }

    /// The session's own default, else the server's.
    pub fn get(&self, session: &str) -> Option<T> {
        lock(&self.map)
            .get(session)
            .cloned()
            .or_else(|| lock(&self.fallback).clone())
    }

    /// The default for sessions that set none (saved by the caller, in the server settings).
    pub fn set_fallback(&self, value: Option<T>) {
        *lock(&self.fallback) = value;
    }

    /// Set (Some) or clear (None) a session's default, saved before it applies.
    pub async fn set(&self, session: &str, value: Option<T>) -> Result<(), StoreError> {
        let json = {
            let mut map = lock(&self.map).clone();
            match &value {
                Some(v) => map.insert(session.to_string(), v.clone()),
                None => map.remove(session),
            };
            serde_json::to_string(&map).expect("defaults serialize")
        };
        if let Some(db) = &self.store {
            db.settings_put(self.key, &json).await?;
        }
        let mut map = lock(&self.map);
        match value {
            Some(v) => map.insert(session.to_string(), v),
            None => map.remove(session),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test]
    async fn defaults_are_saved_and_read_back(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let d = SessionDefaults::<f32>::open(Some(store.clone()), "test.sessions").await;
        d.set_fallback(Some(0.5));
        d.set("a", Some(0.9)).await.unwrap();
        assert_eq!((d.get("a"), d.get("b")), (Some(0.9), Some(0.5)));
        let again = SessionDefaults::<f32>::open(Some(store), "test.sessions").await;
        assert_eq!((again.get("a"), again.get("b")), (Some(0.9), None));
        again.set("a", None).await.unwrap();
        assert_eq!(again.get("a"), None);
    }
}
