//! A thinking budget (Anthropic's `thinking.budget_tokens`): once a sequence has reasoned for
//! that many tokens without closing its `<think>` block, the engine writes the closing tag for
//! it, token by token, and the model goes on with its answer. Counting starts at the first
//! generated token when the prompt left the block open (DeepSeek-R1 distills), or once the model
//! opens it itself (Qwen3); a model that closes the block on its own within the budget is left
//! alone. Tags are found in the text, so they count however the tokenizer splits them.

use std::collections::VecDeque;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// What validation hands the engine: the budget and the closing as this tokenizer writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThinkingBudget {
    pub tokens: usize,
    /// The prompt ends inside an open block.
    pub opened: bool,
    /// What is written to close the block (the tag and the blank line after it).
    pub close: Vec<u32>,
}

/// One sequence's budget as it generates.
#[derive(Debug)]
pub struct Budget {
    left: usize,
    counting: bool,
    /// The block is closed (by the model, or being closed by the engine).
    over: bool,
    close: Vec<u32>,
    /// Closing tokens still to write.
    forcing: VecDeque<u32>,
    /// The last characters seen, where a tag may be breaking across pieces of text.
    tail: String,
}

impl Budget {
    pub fn new(spec: ThinkingBudget) -> Self {
        Self {
            left: spec.tokens,
            counting: spec.opened,
            over: false,
            close: spec.close,
            forcing: VecDeque::new(),
            tail: String::new(),
        }
    }

    /// The token the engine writes next instead of sampling, while it closes the block.
    pub fn forced(&mut self) -> Option<u32> {
        self.forcing.pop_front()
    }

    /// Text the sequence wrote: opens or closes the block.
    pub fn saw_text(&mut self, text: &str) {
        if self.over {
            return;
        }
        self.tail.push_str(text);
        if !self.counting {
            if let Some(at) = self.tail.find(OPEN) {
                self.counting = true;
                self.tail.drain(..at + OPEN.len());
            }
        }
        if self.counting && self.tail.contains(CLOSE) {
            self.over = true;
        }
        let keep = self.tail.len().saturating_sub(CLOSE.len());
        let cut = (keep..=self.tail.len())
            .find(|&i| self.tail.is_char_boundary(i))
            .unwrap_or(0);
        self.tail.drain(..cut);
    }

    /// A generated token (after its text): one less to reason with; at none left, the closing
    /// is queued.
    pub fn saw_token(&mut self) {
        if self.over || !self.counting {
            return;
        }
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            self.forcing = self.close.iter().copied().collect();
            self.over = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(tokens: usize, opened: bool) -> Budget {
        Budget::new(ThinkingBudget {
            tokens,
            opened,
            close: vec![7, 8],
        })
    }

    #[test]
    fn an_open_block_is_closed_once_the_budget_is_spent() {
        let mut b = budget(3, true);
        for _ in 0..2 {
            b.saw_text("hm ");
            b.saw_token();
            assert_eq!(b.forced(), None);
        }
        b.saw_text("hm ");
        b.saw_token();
        assert_eq!(
            (b.forced(), b.forced(), b.forced()),
            (Some(7), Some(8), None)
        );
        b.saw_token();
        assert_eq!(b.forced(), None, "closed once");
    }

    #[test]
    fn counting_starts_at_the_models_own_tag_and_its_own_close_ends_it() {
        let mut b = budget(2, false);
        b.saw_text("Sure");
        b.saw_token();
        b.saw_text("<thi");
        b.saw_token();
        assert_eq!(b.forced(), None, "not thinking yet");
        b.saw_text("nk>a");
        b.saw_token();
        b.saw_text("</th");
        b.saw_token();
        assert_eq!(b.forced(), Some(7), "two tokens of reasoning");
        let mut own = budget(3, true);
        own.saw_text("a</th");
        own.saw_token();
        own.saw_text("ink> answer");
        own.saw_token();
        own.saw_token();
        own.saw_token();
        assert_eq!(own.forced(), None, "the model closed it");
    }
}
