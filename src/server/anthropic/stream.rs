//! The inference path's events as Anthropic's stream: `message_start`, a `ping`, per block
//! `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
//! `content_block_stop`, then `message_delta` with the stop reason and usage and
//! `message_stop`; a failure is an `error` event.

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{message_id, stop_reason, tool_use};
use crate::infer::{Event, Run};
use crate::server::errors::AnthropicError;

/// Named events, each with its `type` in the data as Anthropic sends them.
struct Out(mpsc::Sender<SseEvent>);

impl Out {
    async fn send(&self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        self.0
            .send(SseEvent::default().event(kind).data(data.to_string()))
            .await
            .is_ok()
    }
}

/// Stream the answer. Returning drops the run: a client that went away cancels the generation.
pub(super) fn events(mut run: Run, model: String) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::spawn(async move {
        let out = Out(tx);
        let start = json!({"message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": run.prompt_tokens, "output_tokens": 0},
        }});
        if !out.send("message_start", start).await || !out.send("ping", json!({})).await {
            return;
        }
        // The open thinking and text blocks' indices, and the next block's.
        let (mut open_text, mut next) = (None::<usize>, 0usize);
        let mut open_thinking = None::<usize>;
        let mut ended = None;
        while let Some(event) = run.events.recv().await {
            match event {
                Event::Reasoning { text, .. } => {
                    let index = match open_thinking {
                        Some(i) => i,
                        None => {
                            let block = json!({"index": next, "content_block": {"type": "thinking", "thinking": "", "signature": ""}});
                            if !out.send("content_block_start", block).await {
                                return;
                            }
                            open_thinking = Some(next);
                            next += 1;
                            next - 1
                        }
                    };
                    let delta = json!({"index": index, "delta": {"type": "thinking_delta", "thinking": text}});
                    if !out.send("content_block_delta", delta).await {
                        return;
                    }
                }
                Event::Text { text, .. } => {
                    if let Some(index) = open_thinking.take() {
                        if !out
                            .send("content_block_stop", json!({"index": index}))
                            .await
                        {
                            return;
                        }
                    }
                    let index = match open_text {
                        Some(i) => i,
                        None => {
                            let block = json!({"index": next, "content_block": {"type": "text", "text": ""}});
                            if !out.send("content_block_start", block).await {
                                return;
                            }
                            open_text = Some(next);
                            next += 1;
                            next - 1
                        }
                    };
                    let delta =
                        json!({"index": index, "delta": {"type": "text_delta", "text": text}});
                    if !out.send("content_block_delta", delta).await {
                        return;
                    }
                }
                Event::Done { calls, finish, .. } => {
                    if let Some(index) = open_thinking.take().or(open_text.take()) {
                        out.send("content_block_stop", json!({"index": index}))
                            .await;
                    }
                    for call in &calls {
                        let mut block = tool_use(call);
                        let input = block["input"].to_string();
                        block["input"] = json!({});
                        let index = next;
                        next += 1;
                        out.send(
                            "content_block_start",
                            json!({"index": index, "content_block": block}),
                        )
                        .await;
                        out.send("content_block_delta", json!({"index": index, "delta": {"type": "input_json_delta", "partial_json": input}})).await;
                        out.send("content_block_stop", json!({"index": index}))
                            .await;
                    }
                    ended = Some(finish);
                }
                Event::End { totals, .. } => {
                    let (reason, sequence) = ended
                        .as_ref()
                        .map(stop_reason)
                        .unwrap_or(("end_turn", None));
                    let delta = json!({
                        "delta": {"stop_reason": reason, "stop_sequence": sequence},
                        "usage": {"output_tokens": totals.completion},
                    });
                    out.send("message_delta", delta).await;
                    out.send("message_stop", json!({})).await;
                    return;
                }
                Event::Error(e) => {
                    let body = AnthropicError::from(e).body();
                    let _ = out
                        .0
                        .send(SseEvent::default().event("error").data(body.to_string()))
                        .await;
                    return;
                }
            }
        }
    });
    crate::server::sse::events(rx)
}
