//! Remote backends' API keys, kept apart from `settings.toml` in `backend-keys.json`, readable
//! by its owner only (0600), and never returned by any API or written to a log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A backend's key: shown as `Key(..)` wherever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(String);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The `Authorization` header's value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// The key file of a data directory.
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(home: &Path) -> Self {
        Self {
            path: home.join("backend-keys.json"),
        }
    }

    /// Every backend's key; none when the file does not exist. A file that cannot be read is an
    /// error (never silently replaced: it holds what the user gave).
    pub fn load(&self) -> std::io::Result<BTreeMap<String, Key>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let map: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", self.path.display()),
            )
        })?;
        Ok(map.into_iter().map(|(k, v)| (k, Key(v))).collect())
    }

    /// Set (`Some`) or remove (`None`) one backend's key; written whole through a temporary
    /// file created 0600, then renamed over the old one.
    pub fn set(&self, backend: &str, key: Option<&str>) -> std::io::Result<()> {
        let mut map: BTreeMap<String, String> =
            self.load()?.into_iter().map(|(k, v)| (k, v.0)).collect();
        match key {
            Some(k) => map.insert(backend.to_string(), k.to_string()),
            None => map.remove(backend),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(serde_json::to_string_pretty(&map)?.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_owner_only_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path());
        assert!(file.load().unwrap().is_empty());
        file.set("vllm", Some("sk-secret")).unwrap();
        file.set("cloud", Some("sk-other")).unwrap();
        file.set("cloud", None).unwrap();
        let keys = file.load().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["vllm"].bearer(), "Bearer sk-secret");
        assert!(!format!("{keys:?}").contains("sk-secret"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("backend-keys.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("backend-keys.json"), "not json").unwrap();
        assert!(file.load().is_err());
    }
}
