//! The Responses API's event stream: the message item opens with the first text, a thinking
//! model's reasoning item before it, calls follow as whole items, and the last event carries the
//! whole response.

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{call_items, message_item, new_id, now, reasoning_item, status_of, usage_json, Echo};
use crate::infer::Event;
use crate::server::errors::ApiError;

/// Named SSE events, each with its `type` and a rising `sequence_number`.
struct Events {
    tx: mpsc::Sender<SseEvent>,
    sequence: u64,
}

/// The reasoning item while it streams: opened with its first text, closed once.
struct Thought {
    id: String,
    text: String,
    open: bool,
}

impl Thought {
    fn new() -> Self {
        Self {
            id: new_id("rs"),
            text: String::new(),
            open: false,
        }
    }

    /// Reasoning text: the item (output 0) opens with the first.
    async fn delta(&mut self, out: &mut Events, piece: &str) -> bool {
        if !self.open {
            self.open = true;
            let item = json!({"type": "reasoning", "id": self.id, "status": "in_progress", "summary": [], "content": []});
            let part = json!({"type": "reasoning_text", "text": ""});
            if !out.send("response.output_item.added", json!({"output_index": 0, "item": item})).await
                || !out.send("response.content_part.added", json!({"item_id": self.id, "output_index": 0, "content_index": 0, "part": part})).await
            {
                return false;
            }
        }
        self.text.push_str(piece);
        let delta =
            json!({"item_id": self.id, "output_index": 0, "content_index": 0, "delta": piece});
        out.send("response.reasoning_text.delta", delta).await
    }

    /// The finished item, once, when there was reasoning.
    async fn close(&mut self, out: &mut Events) -> Option<Value> {
        if !std::mem::take(&mut self.open) {
            return None;
        }
        let text = std::mem::take(&mut self.text);
        let part = json!({"type": "reasoning_text", "text": text});
        let item = reasoning_item(&self.id, &text);
        out.send(
            "response.reasoning_text.done",
            json!({"item_id": self.id, "output_index": 0, "content_index": 0, "text": text}),
        )
        .await;
        out.send(
            "response.content_part.done",
            json!({"item_id": self.id, "output_index": 0, "content_index": 0, "part": part}),
        )
        .await;
        out.send(
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        )
        .await;
        Some(item)
    }
}

impl Events {
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        self.tx
            .send(SseEvent::default().event(kind).data(data.to_string()))
            .await
            .is_ok()
    }
}

/// The answer as Responses events. The message item opens with the first text; calls follow as
/// whole items; the last event carries the whole response. Returning drops the run: a client
/// that went away cancels the generation.
pub(super) fn stream(mut run: crate::infer::Run, echo: Echo, id: String) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    let created = now();
    tokio::spawn(async move {
        let mut out = Events { tx, sequence: 0 };
        let shell = echo.response(&id, created, "in_progress", json!([]), Value::Null);
        if !out
            .send("response.created", json!({"response": shell}))
            .await
            || !out
                .send("response.in_progress", json!({"response": shell}))
                .await
        {
            return;
        }
        let (mut text, mut opened) = (String::new(), false);
        let msg_id = new_id("msg");
        // A thinking model's reasoning item comes first, closed before the message opens.
        let mut thought = Thought::new();
        let mut items: Vec<Value> = Vec::new();
        let mut ended: Option<(&'static str, Vec<Value>)> = None;
        while let Some(event) = run.events.recv().await {
            match event {
                Event::Reasoning { text: piece, .. } => {
                    if !thought.delta(&mut out, &piece).await {
                        return;
                    }
                }
                Event::Text { text: piece, .. } => {
                    if !opened {
                        opened = true;
                        items.extend(thought.close(&mut out).await);
                        let at = items.len();
                        let item = json!({"type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": []});
                        let part = json!({"type": "output_text", "text": "", "annotations": []});
                        if !out.send("response.output_item.added", json!({"output_index": at, "item": item})).await
                            || !out.send("response.content_part.added", json!({"item_id": msg_id, "output_index": at, "content_index": 0, "part": part})).await
                        {
                            return;
                        }
                    }
                    text.push_str(&piece);
                    let delta = json!({"item_id": msg_id, "output_index": items.len(), "content_index": 0, "delta": piece, "logprobs": []});
                    if !out.send("response.output_text.delta", delta).await {
                        return;
                    }
                }
                Event::Done { calls, finish, .. } => {
                    items.extend(thought.close(&mut out).await);
                    let at = items.len();
                    if opened {
                        let item = message_item(&msg_id, &text);
                        let part = json!({"type": "output_text", "text": text, "annotations": []});
                        out.send("response.output_text.done", json!({"item_id": msg_id, "output_index": at, "content_index": 0, "text": text, "logprobs": []})).await;
                        out.send("response.content_part.done", json!({"item_id": msg_id, "output_index": at, "content_index": 0, "part": part})).await;
                        out.send(
                            "response.output_item.done",
                            json!({"output_index": at, "item": item}),
                        )
                        .await;
                        items.push(item);
                    } else if calls.is_empty() {
                        items.push(message_item(&msg_id, ""));
                        announce(&mut out, at, &items[at]).await;
                    }
                    for item in call_items(&calls) {
                        announce(&mut out, items.len(), &item).await;
                        items.push(item);
                    }
                    ended = Some((status_of(&finish), std::mem::take(&mut items)));
                }
                Event::End { totals, .. } => {
                    let (status, items) = ended.take().unwrap_or(("completed", Vec::new()));
                    let whole =
                        echo.response(&id, created, status, json!(items), usage_json(&totals));
                    let kind = if status == "completed" {
                        "response.completed"
                    } else {
                        "response.incomplete"
                    };
                    out.send(kind, json!({"response": whole})).await;
                    return;
                }
                Event::Error(e) => {
                    let body = ApiError::from(e).body();
                    let e = &body["error"];
                    let code = e["code"].as_str().unwrap_or("server_error");
                    out.send(
                        "error",
                        json!({"code": code, "message": e["message"], "param": e["param"]}),
                    )
                    .await;
                    return;
                }
            }
        }
    });
    crate::server::sse::events(rx)
}

/// A finished item streamed whole: added, its arguments or text, done.
async fn announce(out: &mut Events, index: usize, item: &Value) {
    let id = item["id"].clone();
    if item["type"] == "function_call" {
        let mut opening = item.clone();
        opening["arguments"] = json!("");
        opening["status"] = json!("in_progress");
        out.send(
            "response.output_item.added",
            json!({"output_index": index, "item": opening}),
        )
        .await;
        out.send(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": item["arguments"]}),
        )
        .await;
        out.send("response.function_call_arguments.done", json!({"item_id": id, "output_index": index, "name": item["name"], "arguments": item["arguments"]})).await;
    } else {
        let text = item["content"][0]["text"].clone();
        let mut opening = item.clone();
        opening["content"] = json!([]);
        opening["status"] = json!("in_progress");
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        out.send(
            "response.output_item.added",
            json!({"output_index": index, "item": opening}),
        )
        .await;
        out.send("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})).await;
        out.send("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []})).await;
        out.send("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []})).await;
        out.send(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        )
        .await;
    }
    out.send(
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    )
    .await;
}
