//! What `settings.toml` says about routing beyond the local engines: remote OpenAI-compatible
//! backends (`[[backends]]`), fallback chains (`[[chains]]`), the circuit breaker's limits
//! (`[breaker]`) and the `auto` router's rules (`[auto]`). API keys are never here: they live in
//! `backend-keys.json` (0600) beside it.

use serde::{Deserialize, Serialize};

/// A remote engine that speaks OpenAI's API (vLLM, SGLang, llama-server, TGI, a cloud API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Clients name its models `NAME/MODEL`.
    pub name: String,
    /// The base of its OpenAI API, as `http://10.0.0.5:8000/v1`.
    pub url: String,
    /// The models it serves, as it names them.
    pub models: Vec<String>,
    /// Seconds to wait for the connection, the answer's status and its first chunk; past it the
    /// request counts as failed (a chain tries its next target).
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Requests in flight at once (0: no limit); beyond it a request is refused as busy.
    #[serde(default)]
    pub max_concurrent: usize,
    /// Seconds between health checks (`GET /models`).
    #[serde(default = "default_health_interval")]
    pub health_interval: u64,
}

fn default_timeout() -> f64 {
    30.0
}

fn default_health_interval() -> u64 {
    15
}

/// A model alias answered by the first of its targets that can: a local model or `NAME/MODEL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub name: String,
    pub targets: Vec<String>,
}

/// When a target's circuit opens, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// Seconds the circuit stays open before one probe request is let through.
    pub cooldown: f64,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            failures: 3,
            cooldown: 30.0,
        }
    }
}

/// `model: "auto"`: candidates from smallest to largest, each with the rules a prompt must pass
/// for it to answer; the first that accepts answers, the last answers what none accepts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoSpec {
    pub routes: Vec<AutoRoute>,
    /// The embedding model `like` rules compare with.
    pub embedding_model: Option<String>,
}

/// One candidate of `auto` and its rules (all must accept; none given accepts everything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRoute {
    /// A local model, `NAME/MODEL` or a chain.
    pub model: String,
    /// The prompt has at most this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<usize>,
    /// `false`: the prompt holds no code; `true`: it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<bool>,
    /// Labelled examples of what this route answers: the prompt must be at least
    /// `min_similarity` alike (MiniLM cosine) to one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub like: Vec<String>,
    #[serde(default = "default_similarity")]
    pub min_similarity: f64,
}

fn default_similarity() -> f64 {
    0.5
}

impl AutoSpec {
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.routes {
            if r.model.trim().is_empty() || r.model == "auto" {
                return Err("auto: each route names a model (not `auto`)".into());
            }
            if !(-1.0..=1.0).contains(&r.min_similarity) {
                return Err(format!(
                    "auto: `{}` min_similarity is a cosine in [-1, 1]",
                    r.model
                ));
            }
        }
        Ok(())
    }
}

/// Backend and chain names: what may stand before the `/` of a model name.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl BackendSpec {
    /// The URL without a trailing `/`, where `/chat/completions` and `/models` are appended.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    pub fn validate(&self) -> Result<(), String> {
        if !name_ok(&self.name) {
            return Err(format!(
                "backends: `{}` is not a name (letters, digits, - _ . only)",
                self.name
            ));
        }
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok || self.url.contains(char::is_whitespace) {
            return Err(format!(
                "backends: `{}` is not an http(s) URL like http://10.0.0.5:8000/v1",
                self.url
            ));
        }
        if self.models.is_empty() || self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(format!(
                "backends: `{}` names no models (give the names it serves)",
                self.name
            ));
        }
        if !(0.1..=3600.0).contains(&self.timeout) {
            return Err(format!(
                "backends: `{}` timeout {} is out of range (0.1..=3600 s)",
                self.name, self.timeout
            ));
        }
        if !(1..=86_400).contains(&self.health_interval) {
            return Err(format!(
                "backends: `{}` health_interval {} is out of range (1..=86400 s)",
                self.name, self.health_interval
            ));
        }
        Ok(())
    }
}

/// Backends, chains and the breaker checked together: names unique, chains not empty.
pub fn validate(
    backends: &[BackendSpec],
    chains: &[ChainSpec],
    breaker: &BreakerSpec,
) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for b in backends {
        b.validate()?;
        if !names.insert(b.name.as_str()) {
            return Err(format!("backends: `{}` is named twice", b.name));
        }
    }
    for c in chains {
        if !name_ok(&c.name) {
            return Err(format!("chains: `{}` is not a name", c.name));
        }
        if names.contains(c.name.as_str()) {
            return Err(format!("chains: `{}` is also a backend's name", c.name));
        }
        if c.targets.is_empty() || c.targets.iter().any(|t| t.trim().is_empty()) {
            return Err(format!("chains: `{}` has no targets", c.name));
        }
        if c.targets.contains(&c.name) {
            return Err(format!("chains: `{}` names itself", c.name));
        }
    }
    if breaker.failures == 0 || !(0.0..=86_400.0).contains(&breaker.cooldown) {
        return Err("breaker: failures must be at least 1 and cooldown 0..=86400 s".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, url: &str) -> BackendSpec {
        BackendSpec {
            name: name.into(),
            url: url.into(),
            models: vec!["m".into()],
            timeout: 30.0,
            max_concurrent: 0,
            health_interval: 15,
        }
    }

    #[test]
    fn names_urls_and_chains_are_checked() {
        let ok = backend("vllm", "http://127.0.0.1:8000/v1/");
        assert_eq!(ok.base(), "http://127.0.0.1:8000/v1");
        let b = BreakerSpec::default();
        assert!(validate(std::slice::from_ref(&ok), &[], &b).is_ok());
        assert!(validate(&[backend("a/b", "http://x")], &[], &b).is_err());
        assert!(validate(&[backend("a", "ftp://x")], &[], &b).is_err());
        assert!(validate(&[ok.clone(), ok.clone()], &[], &b).is_err());
        let chain = |name: &str, targets: &[&str]| ChainSpec {
            name: name.into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
        };
        assert!(validate(
            std::slice::from_ref(&ok),
            &[chain("main", &["vllm/m", "smollm2"])],
            &b
        )
        .is_ok());
        assert!(validate(std::slice::from_ref(&ok), &[chain("main", &[])], &b).is_err());
        assert!(validate(
            std::slice::from_ref(&ok),
            &[chain("vllm", &["smollm2"])],
            &b
        )
        .is_err());
        assert!(validate(&[], &[chain("x", &["x"])], &b).is_err());
        let never = BreakerSpec {
            failures: 0,
            cooldown: 1.0,
        };
        assert!(validate(&[], &[], &never).is_err());
    }
}
