//! A thinking model's reasoning, split from its answer as the text streams: Qwen3 and the
//! DeepSeek-R1 distills write `<think>…</think>` before answering (the distills' templates open
//! the tag in the prompt, so their output starts inside it). What lies inside goes out as
//! reasoning (`reasoning_content`, a reasoning item, Ollama's `thinking`, Anthropic's thinking
//! block), the rest as the answer, as llama-server's `--reasoning-format deepseek` does. A tag
//! split across two chunks is held until it is whole.

/// How a prompt leaves the model as it starts its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Thinking {
    /// The template knows no thinking: the text is all answer.
    #[default]
    Off,
    /// The answer may open with `<think>` (Qwen3).
    MayOpen,
    /// The prompt ends inside an open `<think>` (DeepSeek-R1 distills).
    Open,
}

impl Thinking {
    /// For a template's source and the prompt it rendered.
    pub fn of(template: &str, prompt: &str) -> Self {
        if !template.contains(OPEN) {
            return Thinking::Off;
        }
        let tail = prompt.trim_end();
        match (tail.rfind(OPEN), tail.rfind(CLOSE)) {
            (Some(open), close) if close.is_none_or(|c| c < open) => Thinking::Open,
            _ => Thinking::MayOpen,
        }
    }
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A piece of streamed text: reasoning, or the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Reasoning(String),
    Answer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet; `<think>` may come.
    Start,
    /// Just past `<think>`: the whitespace before the reasoning is dropped.
    Opened,
    Inside,
    /// Just past `</think>`: the whitespace before the answer is dropped.
    Closed,
    Answer,
}

/// The splitter for one choice.
#[derive(Debug)]
pub struct ThinkSplit {
    state: State,
    /// Text not yet placed: a possible start of a tag, or leading whitespace.
    held: String,
}

impl ThinkSplit {
    pub fn new(thinking: Thinking) -> Self {
        let state = match thinking {
            Thinking::Off => State::Answer,
            Thinking::MayOpen => State::Start,
            Thinking::Open => State::Opened,
        };
        Self {
            state,
            held: String::new(),
        }
    }

    /// The pieces `text` completes, in order.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        if self.state == State::Answer && self.held.is_empty() {
            return vec![Piece::Answer(text.to_string())];
        }
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let rest = self.held.trim_start();
                    if let Some(after) = rest.strip_prefix(OPEN) {
                        self.held = after.to_string();
                        self.state = State::Opened;
                    } else if rest.is_empty() || OPEN.starts_with(rest) {
                        return out;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Opened => {
                    let rest = self.held.trim_start();
                    if rest.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = rest.to_string();
                    self.state = State::Inside;
                }
                State::Inside => match self.held.find(CLOSE) {
                    Some(at) => {
                        let reasoning = self.held[..at].trim_end().to_string();
                        push(&mut out, Piece::Reasoning(reasoning));
                        self.held.drain(..at + CLOSE.len());
                        self.state = State::Closed;
                    }
                    None => {
                        // Held back: a tag's possible start, and the whitespace before it
                        // (the reasoning ends trimmed when the tag follows).
                        let tag = self.held.len() - partial_tag(&self.held, CLOSE);
                        let done = self.held[..tag].trim_end().len();
                        push(&mut out, Piece::Reasoning(self.held[..done].to_string()));
                        self.held.drain(..done);
                        return out;
                    }
                },
                State::Closed => {
                    let rest = self.held.trim_start();
                    if rest.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = rest.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    push(&mut out, Piece::Answer(std::mem::take(&mut self.held)));
                    return out;
                }
            }
        }
    }

    /// The end of the text: whatever was held, where it belongs.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match self.state {
            State::Inside => push(&mut out, Piece::Reasoning(held)),
            State::Opened | State::Closed => {}
            State::Start | State::Answer => push(&mut out, Piece::Answer(held)),
        }
        out
    }
}

fn push(out: &mut Vec<Piece>, piece: Piece) {
    match &piece {
        Piece::Reasoning(t) | Piece::Answer(t) if t.is_empty() => {}
        _ => out.push(piece),
    }
}

/// The length of the longest end of `text` that begins `tag` (a tag cut by a chunk boundary).
fn partial_tag(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(thinking: Thinking, chunks: &[&str]) -> (String, String) {
        let mut s = ThinkSplit::new(thinking);
        let (mut reasoning, mut answer) = (String::new(), String::new());
        let mut pieces: Vec<Piece> = chunks.iter().flat_map(|c| s.push(c)).collect();
        pieces.extend(s.finish());
        for p in pieces {
            match p {
                Piece::Reasoning(t) => reasoning.push_str(&t),
                Piece::Answer(t) => answer.push_str(&t),
            }
        }
        (reasoning, answer)
    }

    #[test]
    fn reasoning_and_answer_come_apart_wherever_the_chunks_break() {
        let text = "<think>\nLet me add: 2 + 2 = 4.\n</think>\n\nThe answer is 4.";
        let want = (
            "Let me add: 2 + 2 = 4.".to_string(),
            "The answer is 4.".to_string(),
        );
        // Every split point, including inside both tags.
        for at in 0..=text.len() {
            if !text.is_char_boundary(at) {
                continue;
            }
            let got = split(Thinking::MayOpen, &[&text[..at], &text[at..]]);
            assert_eq!(got, want, "split at {at}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split(Thinking::MayOpen, &refs), want);
    }

    #[test]
    fn an_open_prompt_starts_inside_and_an_answer_without_tags_is_all_answer() {
        assert_eq!(
            split(Thinking::Open, &["Hmm, 4.", "</th", "ink>", " Four."]),
            ("Hmm, 4.".into(), "Four.".into())
        );
        // Cut off before closing: all reasoning.
        assert_eq!(
            split(Thinking::Open, &["still thinking </thi"]),
            ("still thinking </thi".into(), String::new())
        );
        assert_eq!(
            split(Thinking::MayOpen, &["Paris is ", "the capital."]),
            (String::new(), "Paris is the capital.".into())
        );
        // A `<` that is not a tag is answer.
        assert_eq!(
            split(Thinking::MayOpen, &["<", "b>bold</b>"]),
            (String::new(), "<b>bold</b>".into())
        );
        assert_eq!(
            split(Thinking::Off, &["<think>x</think>y"]),
            (String::new(), "<think>x</think>y".into())
        );
    }

    #[test]
    fn the_prompt_says_where_the_answer_starts() {
        let qwen3 = "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>{% endif %}";
        assert_eq!(
            Thinking::of("{{ x }}", "<|im_start|>assistant\n"),
            Thinking::Off
        );
        assert_eq!(
            Thinking::of(qwen3, "<|im_start|>assistant\n"),
            Thinking::MayOpen
        );
        assert_eq!(
            Thinking::of(qwen3, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
            Thinking::MayOpen
        );
        assert_eq!(
            Thinking::of(qwen3, "<｜Assistant｜><think>\n"),
            Thinking::Open
        );
    }
}
