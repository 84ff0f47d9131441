//! Import a GGUF file from disk into the library (LM Studio's "import model"): checked as a
//! model first, then copied under its name with progress, through a `.part` file so a stopped
//! copy never looks installed. The original is left where it was.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why a file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Rejected(String),
    #[error("the import was cancelled")]
    Cancelled,
    #[error("copying into {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an import will do: the checked source, its size, and where it goes.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    pub source: PathBuf,
    pub name: String,
    pub size_bytes: u64,
    pub architecture: String,
    pub dest: PathBuf,
}

/// Check `source` (an absolute path to a GGUF model) and the name it would get.
pub fn plan(
    models_dir: &Path,
    source: &Path,
    name: Option<&str>,
) -> Result<ImportPlan, ImportError> {
    let reject = |m: String| Err(ImportError::Rejected(m));
    if !source.is_absolute() {
        return reject(format!(
            "`{}` is not an absolute path to a file on this machine",
            source.display()
        ));
    }
    if source
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("gguf"))
    {
        return reject(format!("`{}` is not a .gguf file", source.display()));
    }
    let meta = match std::fs::metadata(source) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return reject(format!("`{}` is not a file", source.display())),
        Err(e) => return reject(format!("`{}`: {e}", source.display())),
    };
    let gguf = crate::engine::gguf::GgufFile::open(source)
        .map_err(|e| ImportError::Rejected(format!("not a model Lantern can read: {e}")))?;
    let architecture = gguf
        .architecture()
        .map_err(|e| ImportError::Rejected(format!("not a model Lantern can read: {e}")))?
        .to_string();
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = match name {
        Some(n) => n.trim().to_string(),
        None => stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches(['-', '.'])
            .to_string(),
    };
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return reject(format!(
            "`{name}` cannot be a model name: use letters, digits, `-`, `_` and `.`"
        ));
    }
    if models_dir.join(&name).exists() {
        return reject(format!(
            "a model named `{name}` is already installed; give another name"
        ));
    }
    let file = source.file_name().map(PathBuf::from).unwrap_or_default();
    Ok(ImportPlan {
        source: source.to_path_buf(),
        dest: models_dir.join(&name).join(file),
        name,
        size_bytes: meta.len(),
        architecture,
    })
}

/// Copy the planned file into the library, telling `observe` (done, total) as it goes; false
/// from it cancels and removes what was copied.
pub fn import(
    plan: &ImportPlan,
    observe: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<PathBuf, ImportError> {
    let dir = plan.dest.parent().expect("dest is models/NAME/FILE");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    if dir.exists() {
        return Err(ImportError::Rejected(format!(
            "a model named `{}` is already installed; give another name",
            plan.name
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let part = plan.dest.with_extension("gguf.part");
    let copied = (|| -> Result<(), ImportError> {
        let mut from = std::fs::File::open(&plan.source).map_err(io(&plan.source))?;
        let mut to = std::fs::File::create(&part).map_err(io(&part))?;
        let mut buf = vec![0u8; 4 << 20];
        let mut done = 0u64;
        loop {
            let n = from.read(&mut buf).map_err(io(&plan.source))?;
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n]).map_err(io(&part))?;
            done += n as u64;
            if !observe(done, plan.size_bytes) {
                return Err(ImportError::Cancelled);
            }
        }
        to.sync_all().map_err(io(&part))?;
        std::fs::rename(&part, &plan.dest).map_err(io(&plan.dest))
    })();
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    copied.map(|()| plan.dest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> PathBuf {
        crate::library::Library::new(&crate::library::home())
            .resolve_gguf("smollm2")
            .expect("models/fetch installs smollm2")
    }

    #[test]
    fn bad_sources_and_names_are_rejected_with_the_reason() {
        let models = tempfile::tempdir().unwrap();
        let dir = models.path();
        let err =
            |source: &Path, name: Option<&str>| plan(dir, source, name).unwrap_err().to_string();
        assert!(err(Path::new("rel/x.gguf"), None).contains("absolute"));
        let text = dir.join("notes.txt");
        std::fs::write(&text, "hi").unwrap();
        assert!(err(&text, None).contains("not a .gguf"));
        let fake = dir.join("fake.gguf");
        std::fs::write(&fake, "GGUF but not really").unwrap();
        assert!(err(&fake, None).contains("not a model Lantern can read"));
        assert!(err(&dir.join("missing.gguf"), None).contains("missing.gguf"));
        assert!(err(&model(), Some("../up")).contains("cannot be a model name"));
        std::fs::create_dir(dir.join("taken")).unwrap();
        assert!(err(&model(), Some("taken")).contains("already installed"));
    }

    #[test]
    fn a_model_is_copied_under_its_name_and_a_cancel_leaves_nothing() {
        let models = tempfile::tempdir().unwrap();
        let p = plan(models.path(), &model(), None).unwrap();
        assert_eq!(p.architecture, "llama");
        assert!(p.name.starts_with("smollm2"), "{}", p.name);
        let mut seen = 0;
        let stopped = import(&p, &mut |done, _| {
            seen = done;
            false
        });
        assert!(matches!(stopped, Err(ImportError::Cancelled)));
        assert!(seen > 0);
        assert!(!models.path().join(&p.name).exists());
        let mut last = (0, 0);
        let dest = import(&p, &mut |done, total| {
            last = (done, total);
            true
        })
        .unwrap();
        assert_eq!(last, (p.size_bytes, p.size_bytes));
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), p.size_bytes);
        assert!(p.source.exists());
    }
}
