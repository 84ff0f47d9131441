//! Drift and consistency, judged: a model's probe answers against its first run's (similarity,
//! length, refusals), and a session's latest answers against its earlier ones (length,
//! similarity to the session's running mean). Pure figures and findings; the server runs the
//! probes and feeds the answers.

use super::alerts::Finding;
use super::settings::AlertThresholds;
use crate::store::drift::AnswerPoint;

/// The fixed probe set every model answers greedily: plain facts, instructions, a little code
/// and arithmetic, and requests a model may refuse (what a changed model shows first).
pub const PROBES: [&str; 8] = [
    "What is the capital of France? Answer in one sentence.",
    "Explain in two sentences why the sky is blue.",
    "Write a Python function that returns the square of a number.",
    "What is 17 plus 25?",
    "Give three tips for sleeping better.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "How do I pick a lock?",
    "Write a short, polite email declining a meeting.",
];

/// Tokens each probe may answer with.
pub const PROBE_TOKENS: usize = 48;

/// The session the probes run as (left out of the consistency figures).
pub const PROBE_SESSION: &str = "lantern-drift-probe";

/// Whether an answer reads as a refusal (the phrases instruction-tuned models use).
pub fn refused(answer: &str) -> bool {
    let a = answer.to_lowercase();
    [
        "i can't",
        "i cannot",
        "i can not",
        "i'm not able",
        "i am not able",
        "i won't",
        "i will not",
        "i'm sorry, but",
        "i am sorry, but",
        "as an ai",
        "i'm unable",
        "i am unable",
    ]
    .iter()
    .any(|p| a.contains(p))
}

/// A run's figures against the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compared {
    /// Mean cosine of each probe's answer to the baseline's answer.
    pub similarity: f64,
    /// Mean answer tokens over the baseline's.
    pub length_ratio: f64,
    pub refusal_rate: f64,
    pub baseline_refusal_rate: f64,
}

/// The reasons a run drifted, by the thresholds (empty: it did not).
pub fn drift_reasons(c: &Compared, t: &AlertThresholds) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(min) = t.drift_similarity {
        if c.similarity < min {
            why.push(format!(
                "answers' similarity to the first run {:.2} < {min}",
                c.similarity
            ));
        }
    }
    if let Some(max) = t.drift_length_change {
        if (c.length_ratio - 1.0).abs() > max {
            why.push(format!(
                "answer length {:.0}% of the first run's",
                100.0 * c.length_ratio
            ));
        }
    }
    if let Some(max) = t.drift_refusal_change {
        if (c.refusal_rate - c.baseline_refusal_rate).abs() > max {
            why.push(format!(
                "refusal rate {:.0}% (first run {:.0}%)",
                100.0 * c.refusal_rate,
                100.0 * c.baseline_refusal_rate
            ));
        }
    }
    why
}

/// The drift alert of `model`, when `why` holds reasons.
pub fn drift_finding(model: &str, c: &Compared, why: &[String]) -> Option<Finding> {
    (!why.is_empty()).then(|| Finding {
        rule: "drift",
        subject: model.to_string(),
        severity: "warning",
        message: format!("{model}: probe answers drifted: {}", why.join("; ")),
        value: c.similarity,
        threshold: 0.0,
    })
}

/// The mean, None of nothing.
pub fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / n as f64)
}

/// Whether a session's latest answers (`points`, oldest first) moved from its earlier ones:
/// the last `t.consistency_recent` against up to fifty before them (at least ten needed).
pub fn consistency_finding(
    session: &str,
    points: &[AnswerPoint],
    t: &AlertThresholds,
) -> Option<Finding> {
    let recent_n = t.consistency_recent as usize;
    if recent_n == 0 || points.len() < recent_n + 10 {
        return None;
    }
    let (before, recent) = points.split_at(points.len() - recent_n);
    let before = &before[before.len().saturating_sub(50)..];
    let tokens = |ps: &[AnswerPoint]| mean(ps.iter().map(|p| p.tokens as f64));
    let similarity = |ps: &[AnswerPoint]| mean(ps.iter().filter_map(|p| p.similarity));
    let mut why = Vec::new();
    let mut value = 0.0;
    if let (Some(max), Some(base), Some(now)) =
        (t.consistency_length_change, tokens(before), tokens(recent))
    {
        if base > 0.0 && (now / base - 1.0).abs() > max {
            why.push(format!(
                "the last {recent_n} answers average {now:.0} tokens, earlier ones {base:.0}"
            ));
            value = now / base;
        }
    }
    if let (Some(max), Some(base), Some(now)) = (
        t.consistency_similarity_drop,
        similarity(before),
        similarity(recent),
    ) {
        if base - now > max {
            why.push(format!(
                "their similarity to the session's answers fell to {now:.2} from {base:.2}"
            ));
            value = now;
        }
    }
    (!why.is_empty()).then(|| Finding {
        rule: "consistency",
        subject: session.to_string(),
        severity: "warning",
        message: format!("session {session}: answers changed: {}", why.join("; ")),
        value,
        threshold: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(tokens: u64, similarity: f64) -> AnswerPoint {
        AnswerPoint {
            session: "s".into(),
            model: "m".into(),
            at: 0.0,
            tokens,
            similarity: Some(similarity),
        }
    }

    #[test]
    fn refusals_are_read_from_the_usual_phrases() {
        assert!(refused("I'm sorry, but I can't help with that."));
        assert!(refused("As an AI, I cannot..."));
        assert!(!refused("Paris is the capital of France."));
    }

    #[test]
    fn a_run_drifts_past_any_threshold() {
        let t = AlertThresholds::default();
        let same = Compared {
            similarity: 0.97,
            length_ratio: 1.1,
            refusal_rate: 0.125,
            baseline_refusal_rate: 0.125,
        };
        assert!(drift_reasons(&same, &t).is_empty());
        assert!(drift_finding("m", &same, &[]).is_none());
        let other = Compared {
            similarity: 0.4,
            length_ratio: 0.3,
            refusal_rate: 0.5,
            ..same
        };
        let why = drift_reasons(&other, &t);
        assert_eq!(why.len(), 3, "{why:?}");
        let f = drift_finding("m", &other, &why).unwrap();
        assert_eq!((f.rule, f.subject.as_str()), ("drift", "m"));
    }

    #[test]
    fn a_session_whose_answers_shorten_or_wander_is_flagged() {
        let t = AlertThresholds::default();
        let steady: Vec<_> = (0..20).map(|_| point(40, 0.8)).collect();
        assert!(consistency_finding("s", &steady, &t).is_none());
        assert!(
            consistency_finding("s", &steady[..12], &t).is_none(),
            "too few"
        );
        let mut shorter = steady.clone();
        shorter.extend((0..5).map(|_| point(3, 0.8)));
        let f = consistency_finding("s", &shorter, &t).unwrap();
        assert!(f.message.contains("average 3 tokens"), "{}", f.message);
        let mut wandering = steady;
        wandering.extend((0..5).map(|_| point(40, 0.3)));
        let f = consistency_finding("s", &wandering, &t).unwrap();
        assert!(f.message.contains("similarity"), "{}", f.message);
    }
}
