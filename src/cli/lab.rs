//! `lantern quantize` and `lantern quality`.

use anyhow::{Context, Result};
use lantern::engine::kv_rows::KvType;
use lantern::engine::quant::{self, parse_target};
use lantern::engine::ChatModel;
use lantern::lab::{prompts, quality};
use lantern::library::Library;
use lantern::Config;

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// An installed model.
    model: String,
    /// Target types, comma-separated: q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, f16, bf16.
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
    /// The reference's KV cache storage (f16 or q8_0).
    #[arg(long, value_enum, default_value = "f16")]
    reference_kv_type: KvType,
    /// The variant's KV cache storage: `--variant-kv-type q8_0` with the same model as both
    /// measures what the q8_0 cache costs.
    #[arg(long, value_enum, default_value = "f16")]
    variant_kv_type: KvType,
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
    // Each model on an engine thread of its own, as the server runs them.
    let engine = |kv_type| lantern::scheduler::EngineConfig {
        kv_type,
        ..Default::default()
    };
    // Named with their KV type where it is not the default, so the report tells them apart.
    let name = |model: &str, kv: KvType| match kv {
        KvType::F16 => model.to_string(),
        other => format!("{model} (KV {})", other.name()),
    };
    let names = (
        name(&args.reference, args.reference_kv_type),
        name(&args.variant, args.variant_kv_type),
    );
    let reference = lantern::scheduler::EngineHandle::start(
        &args.reference,
        reference,
        engine(args.reference_kv_type),
    );
    let variant = lantern::scheduler::EngineHandle::start(
        &args.variant,
        variant,
        engine(args.variant_kv_type),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(quality::compare(
        (&names.0, &names.1),
        &reference,
        &variant,
        &set,
        &list,
        args.max_tokens,
        &mut |_, m| {
            eprintln!("{m}");
            true
        },
    ))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} vs {}: KL mean {:.5} p99 {:.5}, top-1 agreement {:.1}%, perplexity {:.3} vs {:.3}, {:.1} vs {:.1} tok/s ({} positions, {} prompts)",
            report.variant,
            report.reference,
            report.kl_mean.unwrap_or(f64::NAN),
            report.kl_p99.unwrap_or(f64::NAN),
            100.0 * report.top1_agreement,
            report.perplexity_variant,
            report.perplexity_reference.unwrap_or(f64::NAN),
            report.variant_tokens_per_second,
            report.reference_tokens_per_second,
            report.positions,
            report.prompts
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The experiment's name (created if new, resumed if it exists).
    name: String,
    /// A variant: NAME=MODEL, optionally with ,compression=METHOD@RATIO ,temperature=T ,weight=W.
    /// Repeat for each (2 to 8); the first is the reference.
    #[arg(long = "variant", required = true)]
    variants: Vec<String>,
    /// A JSONL prompt set; default: the built-in set.
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// Use only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// The running `lantern serve` to run it on.
    #[arg(long, env = "LANTERN_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An API key, if the server wants one. Without one, the admin token of this data
    /// directory (`admin-token`, made by the server) is sent: the experiment API is admin.
    #[arg(long, env = "LANTERN_API_KEY")]
    api_key: Option<String>,
}

fn parse_variant(text: &str) -> Result<serde_json::Value> {
    let mut parts = text.split(',');
    let (name, model) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .ok_or_else(|| anyhow::anyhow!("--variant `{text}`: expected NAME=MODEL[,key=value...]"))?;
    let mut v = serde_json::json!({"name": name, "model": model});
    for part in parts {
        let (k, val) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--variant `{text}`: `{part}` is not key=value"))?;
        match k {
            "compression" => {
                let (method, ratio) = val.split_once('@').unwrap_or((val, "1"));
                v["compression"] =
                    serde_json::json!({"method": method, "ratio": ratio.parse::<f64>()?});
            }
            "temperature" => v["temperature"] = serde_json::json!(val.parse::<f32>()?),
            "weight" => v["weight"] = serde_json::json!(val.parse::<f64>()?),
            other => anyhow::bail!("--variant `{text}`: unknown key `{other}`"),
        }
    }
    Ok(v)
}

/// Run an experiment on a running server and print its summary.
pub fn compare(config: &Config, args: CompareArgs) -> Result<()> {
    let base = args.server.trim_end_matches('/');
    let credential = args
        .api_key
        .clone()
        .or_else(|| lantern::server::admin_token::AdminToken::read(&config.home()));
    let call =
        |method: &str, path: &str, body: Option<&serde_json::Value>| -> Result<serde_json::Value> {
            let mut req = ureq::request(method, &format!("{base}{path}"));
            if let Some(k) = &credential {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            let resp = match body {
                Some(b) => req.send_json(b.clone()),
                None => req.call(),
            };
            match resp {
                Ok(r) => Ok(r.into_json()?),
                Err(ureq::Error::Status(code, r)) => {
                    let v: serde_json::Value = r.into_json().unwrap_or_default();
                    anyhow::bail!(
                        "{code}: {}",
                        v["error"]["message"].as_str().unwrap_or("error")
                    )
                }
                Err(e) => Err(anyhow::anyhow!("{base}: {e} (is `lantern serve` running?)")),
            }
        };
    let variants = args
        .variants
        .iter()
        .map(|v| parse_variant(v))
        .collect::<Result<Vec<_>>>()?;
    let mut prompts: Option<Vec<String>> = match &args.prompts {
        Some(p) => Some(
            prompts::parse_jsonl(&std::fs::read_to_string(p)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    if let Some(n) = args.limit {
        let list =
            prompts.get_or_insert_with(|| prompts::BUILTIN.iter().map(|s| s.to_string()).collect());
        list.truncate(n.max(1));
    }
    let spec = serde_json::json!({
        "name": args.name, "variants": variants, "prompts": prompts, "max_tokens": args.max_tokens,
    });
    match call("POST", "/api/lab/experiments", Some(&spec)) {
        Ok(_) => eprintln!("created experiment {}", args.name),
        Err(e) if e.to_string().contains("exists") => {
            eprintln!("resuming experiment {}", args.name)
        }
        Err(e) => return Err(e),
    }
    let started = call(
        "POST",
        &format!("/api/lab/experiments/{}/run", args.name),
        Some(&serde_json::json!({})),
    )?;
    let job = started["job"].as_u64().unwrap_or(0);
    loop {
        let j = call("GET", &format!("/api/jobs/{job}"), None)?;
        match j["state"].as_str() {
            Some("running") => {
                eprint!(
                    "\r[{:>3.0}%] {}        ",
                    100.0 * j["progress"].as_f64().unwrap_or(0.0),
                    j["message"].as_str().unwrap_or("")
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Some("done") => break,
            _ => anyhow::bail!(
                "the run ended: {}",
                j["error"].as_str().unwrap_or("cancelled")
            ),
        }
    }
    eprintln!();
    let e = call("GET", &format!("/api/lab/experiments/{}", args.name), None)?;
    let ci = |x: &serde_json::Value, digits: usize| match x["mean"].as_f64() {
        Some(m) => format!(
            "{m:.digits$} [{:.digits$}, {:.digits$}]",
            x["low"].as_f64().unwrap_or(m),
            x["high"].as_f64().unwrap_or(m)
        ),
        None => "–".into(),
    };
    println!("| variant | model | TTFT ms (95% CI) | tok/s (95% CI) | prompt tokens | similarity to {} | win rate |", e["summary"]["reference"].as_str().unwrap_or("?"));
    println!("|---|---|---|---|---|---|---|");
    for v in e["summary"]["variants"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            v["name"].as_str().unwrap_or(""),
            v["model"].as_str().unwrap_or(""),
            ci(&v["ttft_ms"], 1),
            ci(&v["tokens_per_second"], 1),
            ci(&v["prompt_tokens"], 0),
            ci(&v["similarity"], 3),
            v["win_rate"].as_f64().map_or("–".into(), |w| format!(
                "{:.0}% of {}",
                100.0 * w,
                v["votes"]
            )),
        );
    }
    for p in e["summary"]["pairs"].as_array().into_iter().flatten() {
        let f = |k: &str| p[k].as_f64().map_or("–".into(), |x| format!("{x:.3}"));
        println!(
            "{} vs {}: similarity Δ {} (p {}), tok/s Δ {} (p {}), votes {}–{} (p {})",
            p["a"].as_str().unwrap_or(""),
            p["b"].as_str().unwrap_or(""),
            f("similarity_difference"),
            f("similarity_p"),
            f("tokens_per_second_difference"),
            f("tokens_per_second_p"),
            p["a_wins"],
            p["b_wins"],
            f("votes_p"),
        );
    }
    Ok(())
}
