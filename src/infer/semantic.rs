//! The semantic response cache on the one path: which requests may use it (a conversation whose
//! last message is the user's question, or a single prompt), the question and everything before
//! it, the threshold (the request's `cache.semantic`, else its session's default), and the probe
//! a run looks up and, on a miss, fills with the fresh answer.

use super::cache::{semantic_scope, SemanticProbe};
use super::embed::DEFAULT_EMBEDDER;
use super::error::InferError;
use super::plan::Infer;
use super::request::{Input, Request};
use super::validate::Validated;
use crate::scheduler::EngineHandle;

/// A request that may use the semantic cache: its threshold, its question, and the text of all
/// that shapes the answer besides (earlier messages, tools, thinking, compression).
pub struct SemanticAsk {
    pub threshold: f32,
    pub question: String,
    pub context: String,
}

/// The question of a request and what came before it; None where a paraphrase of one message
/// is not the same request (several prompts, an answer to continue, a tool's result last).
fn question_of(req: &Request) -> Option<(String, String)> {
    if req.continue_final {
        return None;
    }
    let (question, before) = match &req.input {
        Input::Chat(messages) => {
            let (last, before) = messages.split_last()?;
            if last.role != "user" {
                return None;
            }
            (last.content.clone(), serde_json::to_string(before).ok()?)
        }
        Input::Prompts(p) if p.len() == 1 => (p[0].clone(), String::new()),
        Input::Prompts(_) => return None,
    };
    let context = format!(
        "{before}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
        req.tools, req.tool_choice, req.enable_thinking, req.sampling.compression
    );
    Some((question, context))
}

impl Infer {
    /// Whether `req` asks for the semantic cache (or its session does) and may use it; a
    /// threshold out of range is the request's error.
    pub(super) fn semantic_ask(&self, req: &Request) -> Result<Option<SemanticAsk>, InferError> {
        let spec = req
            .sampling
            .cache
            .or_else(|| self.cache_defaults.get(&req.caller.session));
        let threshold = spec
            .map(|s| s.threshold())
            .transpose()
            .map_err(|e| InferError::invalid(e, "cache.semantic"))?
            .flatten();
        let Some(threshold) = threshold.filter(|_| self.semantic.enabled()) else {
            return Ok(None);
        };
        Ok(question_of(req).map(|(question, context)| SemanticAsk {
            threshold,
            question,
            context,
        }))
    }

    /// The question's vector and scope; None (the request runs without the cache, and the
    /// reason is logged) when the embedding model cannot give one.
    pub(super) async fn semantic_probe(
        &self,
        ask: SemanticAsk,
        engine: &EngineHandle,
        validated: &Validated,
    ) -> Option<SemanticProbe> {
        let embedded = match self.embed_texts(DEFAULT_EMBEDDER, &[&ask.question]).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "semantic cache skipped: no question vector");
                return None;
            }
        };
        let scope = semantic_scope(engine, validated, &ask.context, &embedded.by)?;
        Some(SemanticProbe {
            scope,
            vector: embedded.vectors.first()?.to_vec(),
            threshold: ask.threshold,
            question: ask.question,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::template::ChatMessage;
    use crate::infer::{Api, Caller};

    fn request(input: Input) -> Request {
        Request::new(Api::Chat, "m", input, Caller::test())
    }

    #[test]
    fn the_question_is_the_last_user_message_and_the_rest_is_context() {
        let chat = |m: Vec<ChatMessage>| question_of(&request(Input::Chat(m)));
        let (q, a) = chat(vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Capital of France?"),
        ])
        .unwrap();
        assert_eq!(q, "Capital of France?");
        let (_, b) = chat(vec![
            ChatMessage::new("system", "Be long."),
            ChatMessage::new("user", "Capital of France?"),
        ])
        .unwrap();
        assert_ne!(a, b, "another system prompt is another scope");
        assert!(chat(vec![ChatMessage::new("assistant", "Hi")]).is_none());
        let one = question_of(&request(Input::Prompts(vec!["a".into()])));
        assert_eq!(one.unwrap().0, "a");
        assert!(question_of(&request(Input::Prompts(vec!["a".into(), "b".into()]))).is_none());
        let mut cont = request(Input::Chat(vec![ChatMessage::new("user", "x")]));
        cont.continue_final = true;
        assert!(question_of(&cont).is_none());
    }
}
