//! Experiments: variants (model × compression × sampling) run side by side on a prompt set, and
//! the statistics that say which is better and whether the difference is real. Also the traffic
//! split: `model: "experiment:NAME"` sends each session to one variant, chosen by a stable hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compress::Spec as Compression;

/// One arm of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Shown only after a vote; unique within the experiment.
    pub name: String,
    /// An installed model (a quantization variant is a model: `smollm2-q8_0`).
    pub model: String,
    pub compression: Option<Compression>,
    pub temperature: Option<f32>,
    /// Share of API traffic under `experiment:NAME` (relative to the others' weights).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// What `POST /api/lab/experiments` takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    pub variants: Vec<Variant>,
    /// The variant others are compared with (similarity); default: the first.
    pub reference: Option<String>,
    /// Prompts; default: the built-in set.
    pub prompts: Option<Vec<String>>,
    /// Use only the first N prompts of the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_limit: Option<usize>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Release one variant as a canary: its share of `experiment:NAME` traffic steps up while
    /// it stays within bounds of the others, and rolls back when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::canary::CanarySpec>,
}

fn default_max_tokens() -> usize {
    64
}

impl ExperimentSpec {
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err((
                "an experiment's 'name' has 1 to 64 letters, digits, '-', '_' or '.'".into(),
                "name",
            ));
        }
        if !(2..=8).contains(&self.variants.len()) {
            return Err(("an experiment has 2 to 8 'variants'".into(), "variants"));
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.variants {
            if v.name.is_empty() || !names.insert(v.name.as_str()) {
                return Err((
                    format!("variant names must be non-empty and unique (`{}`)", v.name),
                    "variants",
                ));
            }
            if !(v.weight.is_finite() && v.weight >= 0.0) {
                return Err((
                    format!("variant `{}`: weight must be ≥ 0", v.name),
                    "variants",
                ));
            }
            if let Some(c) = &v.compression {
                c.validate().map_err(|e| (e, "variants"))?;
            }
            if let Some(t) = v.temperature {
                if !(0.0..=2.0).contains(&t) {
                    return Err((
                        format!("variant `{}`: temperature must be in [0, 2]", v.name),
                        "variants",
                    ));
                }
            }
        }
        if self.variants.iter().map(|v| v.weight).sum::<f64>() <= 0.0 {
            return Err((
                "at least one variant needs a weight above 0".into(),
                "variants",
            ));
        }
        if let Some(r) = &self.reference {
            if !names.contains(r.as_str()) {
                return Err((
                    format!("'reference' `{r}` is not one of the variants"),
                    "reference",
                ));
            }
        }
        if let Some(p) = &self.prompts {
            if p.is_empty() || p.iter().any(|s| s.trim().is_empty()) {
                return Err(("'prompts' must be non-empty strings".into(), "prompts"));
            }
        }
        if let Some(c) = &self.canary {
            let names: Vec<&str> = self.variants.iter().map(|v| v.name.as_str()).collect();
            c.validate(&names).map_err(|e| (e, "canary"))?;
        }
        if !(1..=2048).contains(&self.max_tokens) {
            return Err((
                "'max_tokens' must be between 1 and 2048".into(),
                "max_tokens",
            ));
        }
        Ok(())
    }

    pub fn reference(&self) -> &str {
        self.reference.as_deref().unwrap_or(&self.variants[0].name)
    }

    pub fn prompt_list(&self) -> Vec<String> {
        self.prompts.clone().unwrap_or_else(|| {
            super::prompts::BUILTIN
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }

    /// The variant `session` is routed to: a stable hash of the experiment and session picks a
    /// point in [0, 1), and the variants' weights divide that interval.
    pub fn route(&self, session: &str) -> &Variant {
        self.route_among(session, None)
    }

    /// As `route`, leaving out the variant named `except` (a canary's current release).
    pub fn route_among(&self, session: &str, except: Option<&str>) -> &Variant {
        let kept = || {
            self.variants
                .iter()
                .filter(move |v| Some(v.name.as_str()) != except)
        };
        let total: f64 = kept().map(|v| v.weight).sum();
        let point = unit_hash(&self.name, session) * total;
        let mut edge = 0.0;
        for v in kept() {
            edge += v.weight;
            if point < edge {
                return v;
            }
        }
        kept()
            .rfind(|v| v.weight > 0.0)
            .or_else(|| kept().next())
            .unwrap_or(&self.variants[0])
    }
}

/// FNV-1a over `experiment \0 session`, mixed (splitmix64) and mapped to [0, 1).
pub fn unit_hash(experiment: &str, session: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in experiment.bytes().chain([0]).chain(session.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        na += x as f64 * x as f64;
        nb += y as f64 * y as f64;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// A deterministic generator for the resampling (the same data gives the same intervals).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Mean with a 95% percentile-bootstrap interval (2,000 resamples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

pub fn bootstrap(values: &[f64]) -> Option<Estimate> {
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = SplitMix(0x5eed ^ n as u64);
    let mut means: Vec<f64> = (0..2000)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Estimate {
        mean,
        low: means[49],
        high: means[1949],
        n,
    })
}

/// Two-sided p-value that paired differences have mean zero: a sign-flip permutation test
/// (10,000 random flips).
pub fn paired_p_value(differences: &[f64]) -> Option<f64> {
    if differences.is_empty() {
        return None;
    }
    let observed = differences.iter().sum::<f64>().abs();
    if observed == 0.0 {
        return Some(1.0);
    }
    let mut rng = SplitMix(0xf11b ^ differences.len() as u64);
    let trials = 10_000;
    let extreme = (0..trials)
        .filter(|_| {
            let s: f64 = differences
                .iter()
                .map(|d| if rng.next() & 1 == 0 { *d } else { -*d })
                .sum();
            s.abs() >= observed - 1e-12
        })
        .count();
    Some((extreme + 1) as f64 / (trials + 1) as f64)
}

/// Two-sided exact binomial (sign) test p-value of `wins` against `losses` (ties left out).
pub fn sign_test(wins: u64, losses: u64) -> Option<f64> {
    let n = wins + losses;
    if n == 0 {
        return None;
    }
    let k = wins.min(losses);
    // P(X ≤ k) for X ~ Binomial(n, 1/2), doubled.
    let mut term = 0.5f64.powi(n as i32); // C(n, 0) / 2^n
    let mut tail = term;
    for i in 0..k {
        term *= (n - i) as f64 / (i + 1) as f64;
        tail += term;
    }
    Some((2.0 * tail).min(1.0))
}

/// One prompt's result for one variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub prompt_index: usize,
    pub variant: String,
    pub output: String,
    pub ttft_ms: f64,
    pub tokens_per_second: Option<f64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cosine of MiniLM embeddings of this output and the reference variant's.
    pub similarity: Option<f64>,
}

/// A blind pairwise vote: `winner` is `a`, `b` or `tie`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub prompt_index: usize,
    pub a: String,
    pub b: String,
    pub winner: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantSummary {
    pub name: String,
    pub model: String,
    pub rows: usize,
    pub ttft_ms: Option<Estimate>,
    pub tokens_per_second: Option<Estimate>,
    pub prompt_tokens: Option<Estimate>,
    pub similarity: Option<Estimate>,
    pub votes: u64,
    pub wins: u64,
    /// Wins over decided votes (ties count half).
    pub win_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairTest {
    pub a: String,
    pub b: String,
    /// Mean of (b − a) per prompt, and the permutation test's p-value.
    pub similarity_difference: Option<f64>,
    pub similarity_p: Option<f64>,
    pub tokens_per_second_difference: Option<f64>,
    pub tokens_per_second_p: Option<f64>,
    pub a_wins: u64,
    pub b_wins: u64,
    pub ties: u64,
    pub votes_p: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub reference: String,
    pub variants: Vec<VariantSummary>,
    pub pairs: Vec<PairTest>,
}

fn by_prompt<'a>(rows: &'a [Row], variant: &str) -> BTreeMap<usize, &'a Row> {
    rows.iter()
        .filter(|r| r.variant == variant)
        .map(|r| (r.prompt_index, r))
        .collect()
}

fn paired(
    a: &BTreeMap<usize, &Row>,
    b: &BTreeMap<usize, &Row>,
    f: impl Fn(&Row) -> Option<f64>,
) -> Vec<f64> {
    a.iter()
        .filter_map(|(i, ra)| Some(f(b.get(i)?)? - f(ra)?))
        .collect()
}

pub fn summarize(spec: &ExperimentSpec, rows: &[Row], votes: &[Vote]) -> Summary {
    let variants = spec
        .variants
        .iter()
        .map(|v| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.variant == v.name).collect();
            let est = |f: &dyn Fn(&Row) -> Option<f64>| {
                bootstrap(&mine.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let (mut n, mut wins) = (0u64, 0f64);
            for vote in votes.iter().filter(|x| x.a == v.name || x.b == v.name) {
                n += 1;
                let me = if vote.a == v.name { "a" } else { "b" };
                wins += match vote.winner.as_str() {
                    w if w == me => 1.0,
                    "tie" => 0.5,
                    _ => 0.0,
                };
            }
            VariantSummary {
                name: v.name.clone(),
                model: v.model.clone(),
                rows: mine.len(),
                ttft_ms: est(&|r| Some(r.ttft_ms)),
                tokens_per_second: est(&|r| r.tokens_per_second),
                prompt_tokens: est(&|r| Some(r.prompt_tokens as f64)),
                similarity: est(&|r| r.similarity),
                votes: n,
                wins: wins.floor() as u64,
                win_rate: (n > 0).then(|| wins / n as f64),
            }
        })
        .collect();
    let mut pairs = Vec::new();
    for (i, a) in spec.variants.iter().enumerate() {
        for b in &spec.variants[i + 1..] {
            let (ra, rb) = (by_prompt(rows, &a.name), by_prompt(rows, &b.name));
            let sim = paired(&ra, &rb, |r| r.similarity);
            let tps = paired(&ra, &rb, |r| r.tokens_per_second);
            let mean = |d: &[f64]| (!d.is_empty()).then(|| d.iter().sum::<f64>() / d.len() as f64);
            let (mut a_wins, mut b_wins, mut ties) = (0, 0, 0);
            for v in votes {
                let (first, second) = (v.a.as_str(), v.b.as_str());
                let pair =
                    (first == a.name && second == b.name) || (first == b.name && second == a.name);
                if !pair {
                    continue;
                }
                let winner = match v.winner.as_str() {
                    "a" => first,
                    "b" => second,
                    _ => "",
                };
                if winner == a.name {
                    a_wins += 1;
                } else if winner == b.name {
                    b_wins += 1;
                } else {
                    ties += 1;
                }
            }
            pairs.push(PairTest {
                a: a.name.clone(),
                b: b.name.clone(),
                similarity_difference: mean(&sim),
                similarity_p: paired_p_value(&sim),
                tokens_per_second_difference: mean(&tps),
                tokens_per_second_p: paired_p_value(&tps),
                a_wins,
                b_wins,
                ties,
                votes_p: sign_test(a_wins, b_wins),
            });
        }
    }
    Summary {
        reference: spec.reference().to_string(),
        variants,
        pairs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(weights: [f64; 2]) -> ExperimentSpec {
        ExperimentSpec {
            name: "exp".into(),
            variants: vec![
                Variant {
                    name: "a".into(),
                    model: "m".into(),
                    compression: None,
                    temperature: None,
                    weight: weights[0],
                },
                Variant {
                    name: "b".into(),
                    model: "m-q8_0".into(),
                    compression: None,
                    temperature: None,
                    weight: weights[1],
                },
            ],
            reference: None,
            prompts: None,
            prompt_limit: None,
            max_tokens: 16,
            canary: None,
        }
    }

    #[test]
    fn sessions_stay_on_one_variant_and_split_by_weight() {
        let s = spec([1.0, 3.0]);
        assert_eq!(s.route("session-1").name, s.route("session-1").name);
        let b = (0..10_000)
            .filter(|i| s.route(&format!("session-{i}")).name == "b")
            .count();
        // 75% of sessions to b, within ±5 points.
        assert!((7_000..=8_000).contains(&b), "{b}");
        let only_a = spec([1.0, 0.0]);
        assert!((0..1000).all(|i| only_a.route(&i.to_string()).name == "a"));
    }

    #[test]
    fn statistics_behave() {
        let e = bootstrap(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(e.mean, 3.0);
        assert!(e.low < 3.0 && e.high > 3.0 && e.low >= 1.0 && e.high <= 5.0);
        assert!(paired_p_value(&[1.0; 12]).unwrap() < 0.01);
        assert!(paired_p_value(&[1.0, -1.0, 1.0, -1.0]).unwrap() > 0.5);
        assert!((sign_test(10, 0).unwrap() - 2.0 / 1024.0).abs() < 1e-12);
        assert_eq!(sign_test(3, 3).unwrap(), 1.0);
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
    }

    #[test]
    fn specs_are_validated() {
        assert!(spec([1.0, 1.0]).validate().is_ok());
        let mut s = spec([1.0, 1.0]);
        s.variants[1].name = "a".into();
        assert_eq!(s.validate().unwrap_err().1, "variants");
        let mut s = spec([0.0, 0.0]);
        assert!(s.validate().is_err());
        s = spec([1.0, 1.0]);
        s.name = "has space".into();
        assert_eq!(s.validate().unwrap_err().1, "name");
    }

    #[test]
    fn summaries_count_votes_and_pair_rows() {
        let s = spec([1.0, 1.0]);
        let row = |i, v: &str, sim| Row {
            prompt_index: i,
            variant: v.into(),
            output: String::new(),
            ttft_ms: 10.0,
            tokens_per_second: Some(100.0),
            prompt_tokens: 5,
            completion_tokens: 5,
            similarity: Some(sim),
        };
        let rows: Vec<Row> = (0..6)
            .flat_map(|i| [row(i, "a", 1.0), row(i, "b", 0.8)])
            .collect();
        let votes = vec![
            Vote {
                prompt_index: 0,
                a: "a".into(),
                b: "b".into(),
                winner: "a".into(),
            },
            Vote {
                prompt_index: 1,
                a: "b".into(),
                b: "a".into(),
                winner: "a".into(),
            },
            Vote {
                prompt_index: 2,
                a: "a".into(),
                b: "b".into(),
                winner: "tie".into(),
            },
        ];
        let sum = summarize(&s, &rows, &votes);
        assert_eq!(sum.variants[0].votes, 3);
        assert_eq!(sum.variants[0].win_rate, Some(0.5));
        assert_eq!(
            (sum.pairs[0].a_wins, sum.pairs[0].b_wins, sum.pairs[0].ties),
            (1, 1, 1)
        );
        assert!((sum.pairs[0].similarity_difference.unwrap() + 0.2).abs() < 1e-9);
    }
}
