//! `model: "auto"`: the smallest candidate whose rules accept the prompt answers it. Rules are
//! the prompt's tokens, whether it holds code, and its MiniLM similarity to labelled examples
//! (vectors through the embedding cache, so examples are embedded once). The decision and its
//! reason go to the response headers and the request log.

use super::backends::{AutoRoute, AutoSpec};
use super::embed::DEFAULT_EMBEDDER;
use super::error::InferError;
use super::plan::Infer;
use super::request::{Input, Request};

/// Where `auto` sends a request, and why.
pub(super) struct Choice {
    pub model: String,
    pub reason: String,
}

/// Whether text holds code: a fenced block, or several lines that read as code.
pub fn holds_code(text: &str) -> bool {
    if text.contains("```") {
        return true;
    }
    let code_like = |l: &str| {
        let t = l.trim();
        let starts = [
            "def ",
            "fn ",
            "class ",
            "import ",
            "from ",
            "#include",
            "function ",
            "const ",
            "let ",
            "var ",
            "pub ",
            "return ",
            "if (",
            "for (",
            "while (",
            "public ",
            "SELECT ",
        ];
        starts.iter().any(|s| t.starts_with(s))
            || t.ends_with(';')
            || t.ends_with('{')
            || t == "}"
            || t.contains("=>")
            || t.contains("();")
    };
    text.lines().filter(|l| code_like(l)).count() >= 2
}

/// The text rules look at: the conversation's last user message, or the prompts.
fn text_of(req: &Request) -> String {
    match &req.input {
        Input::Chat(messages) => messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default(),
        Input::Prompts(p) => p.join("\n"),
    }
}

impl Infer {
    /// The prompt's tokens by the first local candidate's tokenizer (its chat template
    /// applied), or about four characters a token when no candidate is local.
    async fn auto_tokens(
        &self,
        req: &Request,
        spec: &AutoSpec,
    ) -> Result<(usize, String), InferError> {
        let local: Vec<String> = self.engines.servable().into_iter().map(|m| m.id).collect();
        match spec.routes.iter().find(|r| local.contains(&r.model)) {
            Some(r) => {
                let mut counted = req.clone();
                counted.model = r.model.clone();
                Ok((self.count_tokens(counted).await?, r.model.clone()))
            }
            None => {
                let chars: usize = text_of(req).chars().count();
                Ok((chars.div_ceil(4), "about 4 characters a token".into()))
            }
        }
    }

    /// The best cosine of `text` to one of `examples`, and that example.
    async fn likeness(
        &self,
        text: &str,
        examples: &[String],
        spec: &AutoSpec,
    ) -> Result<(f64, String), InferError> {
        let name = spec.embedding_model.as_deref().unwrap_or(DEFAULT_EMBEDDER);
        let texts: Vec<&str> = std::iter::once(text)
            .chain(examples.iter().map(String::as_str))
            .collect();
        let vectors = self
            .embed_texts(name, &texts)
            .await
            .map_err(|e| InferError::Unavailable {
                message: format!("`auto` could not compare the prompt with its examples: {e}"),
                code: "auto_embedding",
            })?
            .vectors;
        let best = vectors[1..]
            .iter()
            .zip(examples)
            .map(|(v, e)| (crate::lab::experiments::cosine(&vectors[0], v), e.clone()))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        Ok(best.unwrap_or((-1.0, String::new())))
    }

    /// The candidate `auto` picks for `req`, with the reason (each refusal on the way named).
    pub(super) async fn auto(&self, req: &Request) -> Result<Choice, InferError> {
        let spec = self.backends.auto();
        let Some(last) = spec.routes.last() else {
            return Err(InferError::invalid(
                "`model: \"auto\"` needs candidates: add [[auto.routes]] to the settings",
                "model",
            ));
        };
        let text = text_of(req);
        let code = holds_code(&text);
        let mut tokens = None;
        let mut refused = Vec::new();
        for r in &spec.routes {
            match self.judge(r, req, &spec, &text, code, &mut tokens).await? {
                Ok(why) => {
                    let mut reason = format!("{}: {}", r.model, why.join(", "));
                    if !refused.is_empty() {
                        reason = format!("{reason} (refused: {})", refused.join("; "));
                    }
                    return Ok(Choice {
                        model: r.model.clone(),
                        reason,
                    });
                }
                Err(why) => refused.push(format!("{}: {why}", r.model)),
            }
        }
        Ok(Choice {
            model: last.model.clone(),
            reason: format!(
                "no rule accepted, the last route answers ({})",
                refused.join("; ")
            ),
        })
    }

    /// One candidate's rules: what each accepted, or the first refusal.
    async fn judge(
        &self,
        r: &AutoRoute,
        req: &Request,
        spec: &AutoSpec,
        text: &str,
        code: bool,
        tokens: &mut Option<(usize, String)>,
    ) -> Result<Result<Vec<String>, String>, InferError> {
        let mut why = Vec::new();
        if let Some(max) = r.max_prompt_tokens {
            if tokens.is_none() {
                *tokens = Some(self.auto_tokens(req, spec).await?);
            }
            let (n, by) = tokens
                .as_ref()
                .map(|(n, by)| (*n, by.as_str()))
                .unwrap_or_default();
            if n > max {
                return Ok(Err(format!("{n} prompt tokens > {max} ({by})")));
            }
            why.push(format!("{n} prompt tokens <= {max}"));
        }
        if let Some(want) = r.code {
            let said = if code { "holds code" } else { "holds no code" };
            if code != want {
                return Ok(Err(format!("the prompt {said}")));
            }
            why.push(format!("the prompt {said}"));
        }
        if !r.like.is_empty() {
            let (best, example) = self.likeness(text, &r.like, spec).await?;
            if best < r.min_similarity {
                return Ok(Err(format!("similarity {best:.2} < {}", r.min_similarity)));
            }
            why.push(format!(
                "similarity {best:.2} >= {} to {example:?}",
                r.min_similarity
            ));
        }
        if why.is_empty() {
            why.push("no rules: takes every prompt".into());
        }
        Ok(Ok(why))
    }
}

#[cfg(test)]
mod tests {
    use super::holds_code;

    #[test]
    fn code_is_told_from_prose() {
        assert!(holds_code("Fix this:\n```\nx = 1\n```"));
        assert!(holds_code("fn main() {\n    println!(\"hi\");\n}"));
        assert!(holds_code("def f(x):\n    return x + 1"));
        assert!(!holds_code("What is the capital of France?"));
        assert!(!holds_code("Write a poem; make it short.\nAbout the sea."));
    }
}
