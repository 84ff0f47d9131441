//! `lantern bench` and `lantern devices`.

use anyhow::{Context, Result};
use lantern::devices::bench::{self, Observer, Options};
use lantern::devices::inventory::{inventory, CpuProbe};
use lantern::engine::device;
use lantern::library::Library;
use lantern::Config;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// An installed model (name or .gguf path), or synthetic:tiny|1b|3b|8b|30b-a3b|30b-a3b-12 (Qwen3-30B-A3B, all or 12 of its layers).
    model: String,
    /// Weight type of a synthetic model: q4_k (default), q8_0, q4_0, q6_k, f16, …
    #[arg(long)]
    quantization: Option<String>,
    /// Fewer and shorter repetitions (a first look, tests).
    #[arg(long)]
    quick: bool,
    /// Repetitions of each test (llama-bench: 5).
    #[arg(long)]
    reps: Option<usize>,
    /// Prompt tokens of the pp test (llama-bench: 512).
    #[arg(long)]
    n_prompt: Option<usize>,
    /// Generated tokens of the tg test (llama-bench: 128).
    #[arg(long)]
    n_gen: Option<usize>,
    /// Batch sizes of the aggregate decode test.
    #[arg(long, value_delimiter = ',')]
    batches: Option<Vec<usize>>,
    /// md (llama-bench's table) or json.
    #[arg(long, default_value = "md")]
    output: String,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// Store the result in this database (default: lantern.db in the data directory).
    #[arg(long, env = "LANTERN_DB")]
    db: Option<std::path::PathBuf>,
    /// Do not store the result.
    #[arg(long)]
    no_store: bool,
    /// Compare decoding with and without speculative decoding (prompt lookup, and the draft
    /// model when `--draft` names one) through the engine's scheduler, instead of the
    /// llama-bench tests: tok/s, speed-up and accepted drafts on a code edit and free-form text.
    #[arg(long)]
    speculative: bool,
    /// A draft model for `--speculative` (same tokenizer as MODEL).
    #[arg(long, requires = "speculative")]
    draft: Option<String>,
    /// Keep a synthetic model's GGUF in this directory, reused by later runs (to measure
    /// another engine, such as llama-bench, on the same file).
    #[arg(long)]
    keep_synthetic: Option<std::path::PathBuf>,
}

/// Progress on stderr; Ctrl-C ends the process (nothing is stored mid-run).
struct Stderr;

impl Observer for Stderr {
    fn progress(&mut self, fraction: f64, message: &str) {
        eprintln!("[{:>3.0}%] {message}", 100.0 * fraction);
    }
    fn cancelled(&self) -> bool {
        false
    }
}

pub fn bench(config: &Config, args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.output == "md" || args.output == "json",
        "--output is md or json, not `{}`",
        args.output
    );
    device::set_cpu_threads(config.threads);
    let (dev, note) = device::open(&config.device);
    if let Some(note) = &note {
        eprintln!("{note}");
    }
    let path = if args.model.starts_with("synthetic:") {
        None
    } else {
        Some(Library::new(&config.home()).resolve_gguf(&args.model)?)
    };
    if args.speculative {
        return speculative(config, &args, path.as_deref(), &dev);
    }
    let options = Options::asked(
        args.quick,
        args.reps,
        args.n_prompt,
        args.n_gen,
        args.batches.clone(),
    );
    let target = bench::Target {
        model: &args.model,
        path: path.as_deref(),
        quantization: args.quantization.as_deref(),
        keep_synthetic: args.keep_synthetic.as_deref(),
    };
    let result = bench::run_model(
        &target,
        &std::env::temp_dir(),
        &dev,
        note,
        options,
        &mut Stderr,
    )?;
    let mut value = serde_json::json!(result);
    if !args.no_store {
        let db = args.db.unwrap_or_else(|| config.home().join("lantern.db"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let id = runtime
            .block_on(async {
                let store = lantern::store::Store::open(&db).await?;
                anyhow::Ok(store.bench_save(&result).await?)
            })
            .with_context(|| format!("storing the result in {}", db.display()))?;
        value["id"] = serde_json::json!(id);
        eprintln!("stored as run {id} in {}", db.display());
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", lantern::devices::table::markdown(&result));
    }
    Ok(())
}

/// `--speculative`: the comparison's table (or JSON); not stored in the database.
fn speculative(
    config: &Config,
    args: &BenchArgs,
    path: Option<&std::path::Path>,
    dev: &candle_core::Device,
) -> Result<()> {
    use lantern::devices::speculative;
    let path = path.context("--speculative needs an installed model, not a synthetic one")?;
    let draft_path = match &args.draft {
        Some(d) => Some(Library::new(&config.home()).resolve_gguf(d)?),
        None => None,
    };
    let draft = args.draft.as_deref().zip(draft_path.as_deref());
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    let max_tokens = args.n_gen.unwrap_or(if args.quick { 32 } else { 160 });
    let report = speculative::compare(
        (&args.model, path),
        draft,
        dev,
        (reps, max_tokens),
        &mut |step| eprintln!("{step}"),
    )?;
    let value = serde_json::json!(report);
    if let Some(out) = &args.json_out {
        std::fs::write(out, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", speculative::markdown(&report));
    }
    Ok(())
}

pub fn devices(json: bool) -> Result<()> {
    let mut probe = CpuProbe::new();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let inv = inventory(&mut probe);
    if json {
        println!("{}", serde_json::to_string_pretty(&inv)?);
        return Ok(());
    }
    let c = &inv.cpu;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "CPU   {} ({}), {} cores / {} threads, {} MHz, {:.0}% busy",
        c.model,
        c.architecture,
        c.physical_cores.map_or("?".into(), |n| n.to_string()),
        c.threads,
        c.frequency_mhz,
        c.usage_percent
    );
    println!("      SIMD: {}", c.simd.join(" "));
    println!(
        "RAM   {:.1} GiB, {:.1} GiB available",
        gib(c.memory_total_bytes),
        gib(c.memory_available_bytes)
    );
    if let Some(r) = &inv.gpus.nvidia {
        for g in &r.gpus {
            println!(
                "GPU {} {}: {:.1}/{:.1} GiB used, {}°C, {} W, {}% busy (driver {}, CUDA {})",
                g.index,
                g.name,
                gib(g.memory_used_bytes.unwrap_or(0)),
                gib(g.memory_total_bytes.unwrap_or(0)),
                g.temperature_c.map_or("?".into(), |t| t.to_string()),
                g.power_watts.map_or("?".into(), |w| format!("{w:.0}")),
                g.utilization_percent.map_or("?".into(), |u| u.to_string()),
                r.driver_version.as_deref().unwrap_or("?"),
                r.cuda_version.as_deref().unwrap_or("?"),
            );
        }
    }
    if let Some(why) = &inv.gpus.nvidia_unavailable {
        println!("GPU   none listed: {why}");
    }
    if let Some(m) = &inv.gpus.metal {
        println!("GPU   {m}");
    }
    println!(
        "Backends compiled in: cpu{}{}",
        if inv.backends.cuda { ", cuda" } else { "" },
        if inv.backends.metal { ", metal" } else { "" }
    );
    Ok(())
}
