//! When generation stops, and what text leaves while streaming.
//!
//! `StreamDecoder` turns token ids into text incrementally without ever emitting half of a UTF-8
//! character (byte-level tokens often carry one). `StopStrings` holds back the tail of the text
//! that could still become a stop string, so a client never sees part of one.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// Incremental detokenizer: decodes a window of recent tokens and emits what is new once it is
/// whole (the approach of candle's `TokenOutputStream`).
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    tokens: Vec<u32>,
    prev: usize,
    current: usize,
}

impl StreamDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            prev: 0,
            current: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, false).unwrap_or_default()
    }

    /// Add a token; returns the text it completes, if any.
    pub fn push(&mut self, token: u32) -> Option<String> {
        let before = self.decode(&self.tokens[self.prev..self.current]);
        self.tokens.push(token);
        let after = self.decode(&self.tokens[self.prev..]);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') && after.starts_with(&before)
        {
            let new = after[before.len()..].to_string();
            self.prev = self.current;
            self.current = self.tokens.len();
            Some(new)
        } else {
            None
        }
    }

    /// Whatever is left undecoded at the end (lossy if the model stopped mid-character).
    pub fn finish(&mut self) -> String {
        let before = self.decode(&self.tokens[self.prev..self.current]);
        let after = self.decode(&self.tokens[self.prev..]);
        self.prev = self.tokens.len();
        self.current = self.tokens.len();
        after.strip_prefix(&before).unwrap_or("").to_string()
    }
}

/// Stop strings with hold-back for streaming.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
    /// The stop string found, once one is.
    matched: Option<usize>,
}

/// The outcome of feeding text to `StopStrings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to send now.
    pub emit: String,
    /// A stop string was found; nothing after it is emitted.
    pub stopped: bool,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            matched: None,
        }
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        self.pending.push_str(text);
        let found = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, which)) = found {
            self.matched = Some(which);
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return StopCheck {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.pending.ends_with(&s[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopCheck {
            emit,
            stopped: false,
        }
    }

    /// The stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Text still held back when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_stop_strings() {
        let mut s = StopStrings::new(vec!["</end>".into()]);
        assert_eq!(s.push("Hello <").emit, "Hello ");
        assert_eq!(s.push("/e").emit, "");
        let c = s.push("nd> more");
        assert!(c.stopped);
        assert_eq!(c.emit, "");
    }

    #[test]
    fn releases_text_that_stops_matching() {
        let mut s = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(s.push("ST").emit, "");
        assert_eq!(s.push("ay").emit, "STay");
        assert_eq!(s.push("S").emit, "");
        assert_eq!(s.flush(), "S");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut s = StopStrings::new(vec!["b".into(), "cd".into()]);
        assert_eq!(s.matched(), None);
        let c = s.push("a cd b");
        assert_eq!(
            s.matched(),
            Some("cd"),
            "the one that ended the text is named"
        );
        assert!(c.stopped);
        assert_eq!(c.emit, "a ");
    }

    #[test]
    fn multibyte_text_is_never_split() {
        let mut s = StopStrings::new(vec!["é!".into()]);
        assert_eq!(s.push("café").emit, "caf");
        assert_eq!(s.push(".").emit, "é.");
    }
}
