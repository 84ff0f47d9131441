//! Turning logits into the next token: logit bias, repetition / presence / frequency penalties,
//! temperature, top-k, top-p, min-p, a seeded RNG, and log-probabilities with top-N alternatives.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Sampling settings of one request. Defaults are greedy-free sampling as llama.cpp's server
/// uses them; `temperature = 0` means greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already seen; 1 = off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a token already generated.
    pub frequency_penalty: f32,
    pub logit_bias: HashMap<u32, f32>,
    pub seed: Option<u64>,
    /// How many alternatives to report with each token's log-probability (None: no logprobs).
    pub top_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: HashMap::new(),
            seed: None,
            top_logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// The chosen token and, when asked (`top_logprobs` set), its log-probability under the model
/// (before temperature and truncation, as OpenAI reports it) and the best alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Counts of generated tokens, for the presence and frequency penalties.
    counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            counts: HashMap::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from one row of logits; `context` is the prompt plus what has been
    /// generated (the repetition penalty looks at all of it, as llama.cpp's does).
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Sampled {
        let p = &self.params;
        let adjusted = !p.logit_bias.is_empty()
            || (p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0)
            || p.presence_penalty != 0.0
            || p.frequency_penalty != 0.0;
        // Copy the row only when something changes it: a decode step samples every running
        // sequence on the engine thread.
        let logits: std::borrow::Cow<[f32]> = if adjusted {
            let mut owned = logits.to_vec();
            for (&tok, &bias) in &p.logit_bias {
                if let Some(l) = owned.get_mut(tok as usize) {
                    *l += bias;
                }
            }
            self.apply_penalties(&mut owned, context);
            owned.into()
        } else {
            logits.into()
        };
        let token = if self.params.temperature <= 0.0 {
            argmax(&logits)
        } else {
            self.sample_truncated(&logits)
        };
        // A full log-softmax is an exp per vocabulary entry: only when the request asked.
        let (logprob, top) = match self.params.top_logprobs {
            Some(n) => {
                let logprobs = log_softmax(&logits);
                (Some(logprobs[token as usize]), top_n(&logprobs, n))
            }
            None => (None, Vec::new()),
        };
        *self.counts.entry(token).or_insert(0) += 1;
        Sampled {
            token,
            logprob,
            top,
        }
    }

    fn apply_penalties(&self, logits: &mut [f32], context: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in context {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    fn sample_truncated(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect();
        if cands.is_empty() {
            return argmax(logits);
        }
        let k = if p.top_k == 0 {
            cands.len()
        } else {
            p.top_k.min(cands.len())
        };
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cands.truncate(k);
        }
        cands.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let max = cands[0].1;
        let mut probs: Vec<f32> = cands.iter().map(|(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        // min-p: drop tokens less likely than min_p times the best one.
        let mut keep = probs
            .iter()
            .take_while(|&&x| x >= p.min_p * probs[0])
            .count()
            .max(1);
        // top-p: the smallest prefix whose mass reaches top_p.
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            for (i, &x) in probs.iter().enumerate().take(keep) {
                mass += x;
                if mass >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * mass;
        for i in 0..keep {
            r -= probs[i];
            if r <= 0.0 {
                return cands[i].0;
            }
        }
        cands[keep - 1].0
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&l| l - lse).collect()
}

/// The `n` best (token, logprob) pairs, best first.
pub fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..logprobs.len() as u32).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(n - 1, |&a, &b| {
        logprobs[b as usize].total_cmp(&logprobs[a as usize])
    });
    idx.truncate(n);
    idx.sort_unstable_by(|&a, &b| logprobs[b as usize].total_cmp(&logprobs[a as usize]));
    idx.into_iter().map(|i| (i, logprobs[i as usize])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_best() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits(), &[]).token, 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let p = SamplingParams {
            seed: Some(7),
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(p.clone());
            (0..50)
                .map(|_| s.sample(&logits(), &[]).token)
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(
            a.iter().any(|&t| t != a[0]),
            "sampling at temperature 1.5 varies"
        );
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 2.0,
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits(), &[]).token, 1);
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.8,
            temperature: 1.0,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..50 {
            let t = s.sample(&logits(), &[]).token;
            assert!(t == 1 || t == 4, "{t}");
        }
        let mut s = Sampler::new(SamplingParams {
            top_k: 0,
            top_p: 0.1,
            min_p: 0.0,
            temperature: 1.0,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&logits(), &[]).token, 1);
        }
    }

    #[test]
    fn logit_bias_and_penalties_change_the_choice() {
        let mut bias = HashMap::new();
        bias.insert(3, 10.0);
        let mut s = Sampler::new(SamplingParams {
            logit_bias: bias,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits(), &[]).token, 3);

        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits(), &[1]).token, 4);

        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.2,
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&logits(), &[]).token, 1);
        assert_eq!(s.sample(&logits(), &[]).token, 4, "1 was penalized once");
    }

    #[test]
    fn logprobs_are_normalized_and_ranked() {
        let mut s = Sampler::new(SamplingParams {
            top_logprobs: Some(3),
            ..SamplingParams::greedy()
        });
        let out = s.sample(&logits(), &[]);
        let total: f32 = log_softmax(&logits()).iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(
            out.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 4, 2]
        );
        assert_eq!(out.logprob, Some(out.top[0].1));
        let unasked = Sampler::new(SamplingParams::greedy()).sample(&logits(), &[]);
        assert_eq!((unasked.token, unasked.logprob), (out.token, None));
        assert!(unasked.top.is_empty());
    }
}
