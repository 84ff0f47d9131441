//! `lantern quantize` and `lantern quality`.

use anyhow::{Context, Result};
use lantern::engine::quant::{self, parse_target};
use lantern::engine::ChatModel;
use lantern::lab::{prompts, quality};
use lantern::library::Library;
use lantern::Config;

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// An installed model.
    model: String,
    /// Target types, comma-separated: q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, f16.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
}

pub fn quantize(config: &Config, args: QuantizeArgs) -> Result<()> {
    let library = Library::new(&config.home());
    let src = library.resolve_gguf(&args.model)?;
    let targets = args
        .to
        .iter()
        .map(|t| parse_target(t))
        .collect::<Result<Vec<_>, _>>()?;
    for to in targets {
        let (variant, dst) = quant::variant_path(library.models_dir(), &args.model, &src, to);
        let mut last = -1i64;
        let report = quant::requantize(&src, &dst, to, &mut |f, _| {
            let pct = (f * 100.0) as i64;
            if pct / 10 != last / 10 {
                eprintln!("[{pct:>3}%] {variant}");
                last = pct;
            }
            true
        })
        .with_context(|| format!("quantizing {} to {variant}", src.display()))?;
        if let Some(w) = &report.warning {
            eprintln!("note: {w}");
        }
        if let Some(t) = &report.fallback_type {
            eprintln!(
                "note: {} matrices have rows that do not split into {} blocks and were written as {t}",
                report.fallback, report.target
            );
        }
        println!(
            "{variant}: {} ({:.1} MiB from {:.1} MiB)",
            report.output.display(),
            report.output_bytes as f64 / (1 << 20) as f64,
            report.source_bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct QualityArgs {
    /// The reference variant (the best one available).
    reference: String,
    /// The variant to measure against it.
    variant: String,
    /// A JSONL prompt set (`{"prompt": "..."}` per line); default: the built-in set.
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// Tokens of each reference answer to compare over.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Use only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn quality(config: &Config, args: QualityArgs) -> Result<()> {
    lantern::engine::device::set_cpu_threads(config.threads);
    let library = Library::new(&config.home());
    let device = candle_core::Device::Cpu;
    let reference = ChatModel::load(&library.resolve_gguf(&args.reference)?, &device)?;
    let variant = ChatModel::load(&library.resolve_gguf(&args.variant)?, &device)?;
    let (set, mut list) = match &args.prompts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let list = prompts::parse_jsonl(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            (path.display().to_string(), list)
        }
        None => (
            "builtin".to_string(),
            prompts::BUILTIN.iter().map(|s| s.to_string()).collect(),
        ),
    };
    if let Some(n) = args.limit {
        list.truncate(n.max(1));
    }
    let report = quality::compare(
        (&args.reference, &args.variant),
        &reference,
        &variant.transformer,
        &set,
        &list,
        args.max_tokens,
        &mut |_, m| {
            eprintln!("{m}");
            true
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} vs {}: KL mean {:.5} p99 {:.5}, top-1 agreement {:.1}%, perplexity {:.3} vs {:.3}, {:.1} vs {:.1} tok/s ({} positions, {} prompts)",
            report.variant,
            report.reference,
            report.kl_mean,
            report.kl_p99,
            100.0 * report.top1_agreement,
            report.perplexity_variant,
            report.perplexity_reference,
            report.variant_tokens_per_second,
            report.reference_tokens_per_second,
            report.positions,
            report.prompts
        );
    }
    Ok(())
}
