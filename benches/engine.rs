//! Prompt processing and generation speed of one model, llama-bench style: `pp` tokens of
//! prompt in one pass, and `tg` tokens generated one at a time from an empty context; mean and
//! standard deviation over `reps` repetitions after one warm-up. Prints one JSON object.
//!
//! `--batch 1,8,32` adds batched decoding: B sequences, each after a 64-token prompt, decode
//! together for 32 steps (one forward per step, as the scheduler runs them); aggregate tok/s.
//!
//! cargo bench --bench engine -- --model PATH --threads 2 [--pp 512] [--tg 128] [--reps 5]
//!   [--batch 1,8,32]
//! `benches/compare.py` runs it beside llama.cpp's `llama-bench` and writes `benches/results/`.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use lantern::engine::device::set_cpu_threads;
use lantern::engine::models::{SeqInput, Transformer};
use lantern::ChatModel;

struct Args {
    model: String,
    threads: usize,
    pp: usize,
    tg: usize,
    reps: usize,
    batch: Vec<usize>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        model: String::new(),
        threads: 0,
        pp: 512,
        tg: 128,
        reps: 5,
        batch: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("flag without value");
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--threads" => a.threads = value()?.parse()?,
            "--pp" => a.pp = value()?.parse()?,
            "--tg" => a.tg = value()?.parse()?,
            "--reps" => a.reps = value()?.parse()?,
            "--batch" => {
                a.batch = value()?
                    .split(',')
                    .map(|b| b.parse())
                    .collect::<Result<_, _>>()?
            }
            "--bench" => {}
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!a.model.is_empty(), "--model PATH is required");
    Ok(a)
}

/// Deterministic pseudo-random token ids, as llama-bench feeds random tokens.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

fn prompt_pass(t: &Transformer, prompt: &[u32]) -> Result<f64> {
    let mut cache = t.new_cache();
    let start = Instant::now();
    t.forward(&mut [SeqInput {
        tokens: prompt,
        cache: &mut cache,
        all_logits: false,
    }])?;
    Ok(prompt.len() as f64 / start.elapsed().as_secs_f64())
}

fn generation(t: &Transformer, n: usize, first: u32) -> Result<f64> {
    let mut cache = t.new_cache();
    let mut token = first;
    let start = Instant::now();
    for _ in 0..n {
        let logits = t.forward(&mut [SeqInput {
            tokens: &[token],
            cache: &mut cache,
            all_logits: false,
        }])?;
        token = logits.argmax(1)?.to_vec1::<u32>()?[0];
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `b` sequences with 64-token prompts decode `steps` tokens together; aggregate tokens/s.
fn batched_generation(t: &Transformer, b: usize, steps: usize) -> Result<f64> {
    let mut caches: Vec<_> = (0..b).map(|_| t.new_cache()).collect();
    let prompts: Vec<Vec<u32>> = (0..b)
        .map(|i| tokens(64 + i, t.info.vocab_size)[i..].to_vec())
        .collect();
    for (cache, prompt) in caches.iter_mut().zip(&prompts) {
        t.forward(&mut [SeqInput {
            tokens: prompt,
            cache,
            all_logits: false,
        }])?;
    }
    let mut next: Vec<u32> = prompts.iter().map(|p| p[0]).collect();
    let start = Instant::now();
    for _ in 0..steps {
        let mut inputs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, token)| SeqInput {
                tokens: std::slice::from_ref(token),
                cache,
                all_logits: false,
            })
            .collect();
        let logits = t.forward(&mut inputs)?;
        next = logits.argmax(1)?.to_vec1::<u32>()?;
    }
    Ok((b * steps) as f64 / start.elapsed().as_secs_f64())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64;
    (mean, var.sqrt())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    set_cpu_threads(args.threads);
    let model = ChatModel::load(args.model.as_ref(), &Device::Cpu)?;
    let t = &model.transformer;
    let prompt = tokens(args.pp, t.info.vocab_size);
    let bos = model.tokenizer.special.bos.unwrap_or(0);
    prompt_pass(t, &prompt[..args.pp.min(32)])?;
    generation(t, 4, bos)?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..args.reps {
        pp.push(prompt_pass(t, &prompt)?);
        tg.push(generation(t, args.tg, bos)?);
    }
    let batched: Vec<serde_json::Value> = args
        .batch
        .iter()
        .map(|&b| -> Result<serde_json::Value> {
            batched_generation(t, b, 4)?;
            let runs = (0..args.reps.min(3))
                .map(|_| batched_generation(t, b, 32))
                .collect::<Result<Vec<_>>>()?;
            let (mean, sd) = mean_sd(&runs);
            Ok(serde_json::json!({"batch": b, "avg_ts": mean, "stddev_ts": sd}))
        })
        .collect::<Result<_>>()?;
    let (pp_mean, pp_sd) = mean_sd(&pp);
    let (tg_mean, tg_sd) = mean_sd(&tg);
    println!(
        "{}",
        serde_json::json!({
            "engine": "lantern",
            "model": args.model,
            "threads": lantern::engine::device::cpu_threads(),
            "load_s": model.load_time.as_secs_f64(),
            "pp": {"n": args.pp, "avg_ts": pp_mean, "stddev_ts": pp_sd, "samples_ts": pp},
            "tg": {"n": args.tg, "avg_ts": tg_mean, "stddev_ts": tg_sd, "samples_ts": tg},
            "tg_batched": batched,
        })
    );
    Ok(())
}
