//! A remote engine's streamed answer read back into the engine's events: server-sent events
//! split into `data:` payloads, each chunk's choices sent to their own stream (text, tokens
//! with log-probabilities, tool calls), and every choice's figures at the end, with the
//! remote's usage as the count of record.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use crate::engine::generate::FinishReason;
use crate::engine::tools::ToolCall;
use crate::scheduler::{GenEvent, Usage};

/// One server-sent event's payload.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Data(String),
    /// `data: [DONE]`: the answer is complete.
    Done,
}

/// Bytes in, whole events out (an event may arrive split over reads).
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
            let text = String::from_utf8_lossy(&event[..end.0]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            let data = data.join("\n");
            out.push(if data.trim() == "[DONE]" {
                Frame::Done
            } else {
                Frame::Data(data)
            });
        }
        out
    }
}

/// Where the first blank line ends an event: (its length, the separator's).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[derive(Default)]
struct Choice {
    finish: Option<String>,
    /// Content chunks or tokens seen: the count when the remote reports no usage.
    pieces: usize,
    calls: BTreeMap<u64, (String, String)>,
    first: Option<Instant>,
    last: Option<Instant>,
    gaps: Vec<f32>,
}

/// The remote's usage, once it reports it.
#[derive(Default, Clone, Copy)]
struct Reported {
    prompt: usize,
    cached: usize,
    completion: usize,
}

/// A streamed answer being split into its choices' event streams.
pub struct Demux {
    chat: bool,
    /// Prompts in the request (a completions request may carry several).
    prompts: usize,
    sent: Instant,
    choices: Vec<Choice>,
    txs: Vec<UnboundedSender<GenEvent>>,
    usage: Option<Reported>,
}

fn count(v: &Value, pointer: &str) -> usize {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0) as usize
}

impl Demux {
    pub fn new(
        chat: bool,
        prompts: usize,
        sent: Instant,
        txs: Vec<UnboundedSender<GenEvent>>,
    ) -> Self {
        Self {
            chat,
            prompts: prompts.max(1),
            sent,
            choices: txs.iter().map(|_| Choice::default()).collect(),
            txs,
            usage: None,
        }
    }

    /// One chunk of the answer; an error chunk is the remote failing mid-answer.
    pub fn chunk(&mut self, data: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| format!("the remote engine sent a chunk that is not JSON: {e}"))?;
        if let Some(e) = v.get("error") {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            return Err(format!("the remote engine failed: {message}"));
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(Reported {
                prompt: count(u, "/prompt_tokens"),
                cached: count(u, "/prompt_tokens_details/cached_tokens"),
                completion: count(u, "/completion_tokens"),
            });
        }
        let now = Instant::now();
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if i >= self.choices.len() {
                continue;
            }
            let (events, pieces, calls) = if self.chat {
                chat_events(c)
            } else {
                completion_events(c)
            };
            let choice = &mut self.choices[i];
            if pieces > 0 {
                if let Some(last) = choice.last {
                    choice.gaps.push((now - last).as_secs_f32());
                }
                choice.first.get_or_insert(now);
                choice.last = Some(now);
                choice.pieces += pieces;
            }
            for (index, id_name, args) in calls {
                let entry = choice.calls.entry(index).or_default();
                if let Some(name) = id_name {
                    entry.0.push_str(&name);
                }
                entry.1.push_str(&args);
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                choice.finish = Some(f.to_string());
            }
            for e in events {
                let _ = self.txs[i].send(e);
            }
        }
        Ok(())
    }

    /// The stream ended: each finished choice gets its calls and figures; one the remote left
    /// unfinished (a dropped connection) fails with `error`.
    pub fn end(self, error: Option<String>) {
        let n = self.choices.len();
        let per_prompt = n / self.prompts;
        let pieces: Vec<usize> = self.choices.iter().map(|c| c.pieces).collect();
        let completion = completions_of(&pieces, self.usage.map(|u| u.completion));
        for (i, (choice, tx)) in self.choices.into_iter().zip(&self.txs).enumerate() {
            let Some(finish) = choice.finish else {
                let why = error
                    .clone()
                    .unwrap_or_else(|| "the remote engine ended the stream mid-answer".into());
                let _ = tx.send(GenEvent::Failed(why));
                continue;
            };
            let calls: Vec<ToolCall> = choice
                .calls
                .into_values()
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, arguments)| ToolCall { name, arguments })
                .collect();
            if !calls.is_empty() {
                let _ = tx.send(GenEvent::Calls(calls));
            }
            let share = |total: usize| {
                let base = total / self.prompts;
                base + usize::from(i / per_prompt.max(1) < total % self.prompts)
            };
            let ttft = choice.first.map(|f| f - self.sent).unwrap_or_default();
            let usage = Usage {
                prompt_tokens: self.usage.map_or(0, |u| share(u.prompt)),
                cached_tokens: self.usage.map_or(0, |u| share(u.cached)),
                completion_tokens: completion[i],
                finish_reason: if finish == "length" {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                },
                stop_sequence: None,
                queue: Default::default(),
                time_to_first_token: ttft,
                prefill: ttft,
                decode: choice
                    .first
                    .zip(choice.last)
                    .map(|(f, l)| l - f)
                    .unwrap_or_default(),
                inter_token: choice.gaps,
            };
            let _ = tx.send(GenEvent::Done(usage));
        }
    }
}

/// Each choice's completion tokens: what it streamed, with the remote's total (when reported)
/// as the sum of record, the difference on the last choice.
fn completions_of(pieces: &[usize], reported: Option<usize>) -> Vec<usize> {
    let mut out = pieces.to_vec();
    if let (Some(total), Some(last)) = (reported, out.len().checked_sub(1)) {
        let others: usize = out[..last].iter().sum();
        if others <= total {
            out[last] = total - others;
        } else {
            out.iter_mut().for_each(|c| *c = 0);
            out[last] = total;
        }
    }
    out
}

type CallPiece = (u64, Option<String>, String);

fn top_of(entries: Option<&Value>) -> Vec<(String, f32)> {
    entries
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t.get("token")?.as_str()?.to_string(),
                t.get("logprob")?.as_f64()? as f32,
            ))
        })
        .collect()
}

/// A chat chunk's choice: its tokens and text, how many pieces, its call fragments.
fn chat_events(c: &Value) -> (Vec<GenEvent>, usize, Vec<CallPiece>) {
    let mut events = Vec::new();
    let mut pieces = 0;
    let tokens = c.pointer("/logprobs/content").and_then(Value::as_array);
    for t in tokens.into_iter().flatten() {
        events.push(GenEvent::NamedToken {
            token: t
                .get("token")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            logprob: t.get("logprob").and_then(Value::as_f64).map(|l| l as f32),
            top: top_of(t.get("top_logprobs")),
        });
        pieces += 1;
    }
    let delta = c.get("delta");
    if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
        if !text.is_empty() {
            events.push(GenEvent::Text(text.to_string()));
            pieces = pieces.max(1);
        }
    }
    let mut calls = Vec::new();
    let fragments = delta
        .and_then(|d| d.get("tool_calls"))
        .and_then(Value::as_array);
    for call in fragments.into_iter().flatten() {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let args = call.pointer("/function/arguments").and_then(Value::as_str);
        calls.push((
            index,
            name.map(str::to_string),
            args.unwrap_or_default().to_string(),
        ));
        pieces = pieces.max(1);
    }
    (events, pieces, calls)
}

/// A completions chunk's choice: its tokens and text, how many pieces.
fn completion_events(c: &Value) -> (Vec<GenEvent>, usize, Vec<CallPiece>) {
    let mut events = Vec::new();
    let mut pieces = 0;
    let lp = c.get("logprobs");
    let tokens = lp.and_then(|l| l.get("tokens")).and_then(Value::as_array);
    for (k, t) in tokens.into_iter().flatten().enumerate() {
        let logprob = lp
            .and_then(|l| l.get("token_logprobs"))
            .and_then(|l| l.get(k))
            .and_then(Value::as_f64)
            .map(|l| l as f32);
        let top = lp
            .and_then(|l| l.get("top_logprobs"))
            .and_then(|l| l.get(k))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(t, l)| Some((t.clone(), l.as_f64()? as f32)))
                    .collect()
            })
            .unwrap_or_default();
        events.push(GenEvent::NamedToken {
            token: t.as_str().unwrap_or_default().into(),
            logprob,
            top,
        });
        pieces += 1;
    }
    if let Some(text) = c.get("text").and_then(Value::as_str) {
        if !text.is_empty() {
            events.push(GenEvent::Text(text.to_string()));
            pieces = pieces.max(1);
        }
    }
    (events, pieces, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_over_reads_come_out_whole() {
        let mut f = Frames::default();
        assert!(f.push(b"data: {\"a\":").is_empty());
        let out = f.push(b"1}\n\n: comment\n\ndata: [DONE]\r\n\r\n");
        assert_eq!(out, vec![Frame::Data("{\"a\":1}".into()), Frame::Done]);
    }

    #[test]
    fn choices_tool_calls_and_usage_reach_their_streams() {
        let (tx0, mut rx0) = tokio::sync::mpsc::unbounded_channel();
        let (tx1, mut rx1) = tokio::sync::mpsc::unbounded_channel();
        let mut d = Demux::new(true, 1, Instant::now(), vec![tx0, tx1]);
        d.chunk(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#)
            .unwrap();
        d.chunk(r#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"x\""}}]}}]}"#).unwrap();
        d.chunk(r#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#).unwrap();
        d.chunk(r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}"#)
            .unwrap();
        d.chunk(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5}}"#)
            .unwrap();
        d.end(None);
        let drain = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<GenEvent>| {
            let mut v = Vec::new();
            while let Ok(e) = rx.try_recv() {
                v.push(e);
            }
            v
        };
        let a = drain(&mut rx0);
        assert!(matches!(&a[0], GenEvent::Text(t) if t == "Hel"));
        assert!(matches!(&a[1], GenEvent::Text(t) if t == "lo"));
        let GenEvent::Done(u) = &a[2] else {
            panic!("{a:?}")
        };
        assert_eq!((u.prompt_tokens, u.completion_tokens), (7, 2));
        assert_eq!(u.finish_reason, FinishReason::Length);
        let b = drain(&mut rx1);
        let GenEvent::Calls(calls) = &b[0] else {
            panic!("{b:?}")
        };
        assert_eq!(
            calls[0],
            ToolCall {
                name: "f".into(),
                arguments: "{\"x\":1}".into()
            }
        );
        let GenEvent::Done(u) = &b[1] else {
            panic!("{b:?}")
        };
        assert_eq!(
            u.completion_tokens, 3,
            "the remote's total is the sum of record"
        );
    }

    #[test]
    fn an_unfinished_choice_fails_and_an_error_chunk_is_an_error() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut d = Demux::new(false, 1, Instant::now(), vec![tx]);
        d.chunk(r#"{"choices":[{"index":0,"text":"a"}]}"#).unwrap();
        assert!(d
            .chunk(r#"{"error":{"message":"boom"}}"#)
            .unwrap_err()
            .contains("boom"));
        assert!(d.chunk("not json").is_err());
        d.end(None);
        assert!(matches!(rx.try_recv(), Ok(GenEvent::Text(_))));
        assert!(matches!(rx.try_recv(), Ok(GenEvent::Failed(m)) if m.contains("mid-answer")));
        assert_eq!(completions_of(&[2, 2], Some(3)), vec![2, 1]);
        assert_eq!(completions_of(&[3, 2], Some(2)), vec![0, 2]);
        assert_eq!(completions_of(&[1, 1], None), vec![1, 1]);
    }
}
