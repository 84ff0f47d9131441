//! Prompt sets for quality measurements and experiments: a built-in set written for Lantern
//! (varied on purpose: facts, reasoning, code, writing, lists, instructions, other languages)
//! and user sets uploaded as JSONL.

/// The built-in set.
pub const BUILTIN: &[&str] = &[
    "Why is the sky blue? Answer in two sentences.",
    "Write a haiku about a lighthouse in winter.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Explain what a hash map is to a ten-year-old.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List five fruits that are red.",
    "Translate 'Good morning, how are you?' into French.",
    "What is 17 multiplied by 23? Show your working.",
    "Give three tips for sleeping better.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "What causes the seasons on Earth?",
    "Write a short, polite email declining a meeting invitation.",
    "What is the difference between a virus and a bacterium?",
    "Describe the water cycle in four steps.",
    "Write a SQL query that counts orders per customer.",
    "Name three planets in our solar system and one fact about each.",
    "What does HTTP stand for, and what is it used for?",
    "Suggest a name for a bakery that sells only bread.",
    "Why do cats purr?",
    "Explain recursion with a simple example.",
    "What should I pack for a weekend hiking trip?",
    "Write two sentences about the history of the bicycle.",
    "How many minutes are there in a week?",
    "What is photosynthesis?",
    "Write a limerick about a programmer who loves coffee.",
    "Give an example of a metaphor and explain it.",
    "What is the boiling point of water at sea level in Fahrenheit?",
    "Describe a rainbow to someone who has never seen one.",
    "What are the primary colours of light?",
    "Write a JavaScript snippet that reverses a string.",
    "¿Cuál es el río más largo de Europa?",
    "What is the Pythagorean theorem?",
];

/// Prompts from JSONL: one JSON object per line with a `prompt` string (or a bare JSON string).
/// Blank lines are skipped; anything else is an error naming the line.
pub fn parse_jsonl(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON ({e})", i + 1))?;
        let prompt = match &value {
            serde_json::Value::String(s) => s.clone(),
            v => v["prompt"]
                .as_str()
                .ok_or_else(|| format!("line {}: needs a \"prompt\" string", i + 1))?
                .to_string(),
        };
        if prompt.trim().is_empty() {
            return Err(format!("line {}: the prompt is empty", i + 1));
        }
        out.push(prompt);
    }
    if out.is_empty() {
        return Err("the prompt set has no prompts".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_takes_objects_and_strings_and_names_bad_lines() {
        let ok = parse_jsonl("{\"prompt\": \"a\"}\n\n\"b\"\n").unwrap();
        assert_eq!(ok, ["a", "b"]);
        assert!(parse_jsonl("{\"q\": 1}").unwrap_err().starts_with("line 1"));
        assert!(parse_jsonl("\"a\"\nnot json")
            .unwrap_err()
            .starts_with("line 2"));
        assert!(parse_jsonl("").is_err());
        assert!(BUILTIN.len() >= 30);
    }
}
