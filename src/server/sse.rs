//! Server-sent events as OpenAI streams them: `data: {json}` per chunk, then `data: [DONE]`.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// A channel of JSON chunks turned into an SSE response that ends with `[DONE]`. The producer
/// stops (and the engine cancels) when the client goes away and the channel closes.
pub fn stream(chunks: tokio::sync::mpsc::Receiver<serde_json::Value>) -> Response {
    let events = ReceiverStream::new(chunks)
        .map(|chunk| Ok::<_, Infallible>(Event::default().data(chunk.to_string())))
        .chain(tokio_stream::once(Ok(Event::default().data("[DONE]"))));
    sse(events)
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A channel of named events (the live monitor's snapshots and alerts) as an SSE response that
/// lasts until the client goes away.
pub fn events(rx: tokio::sync::mpsc::Receiver<Event>) -> Response {
    sse(ReceiverStream::new(rx).map(Ok::<_, Infallible>))
}
