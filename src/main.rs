//! The `lantern` command line.

mod cli;

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lantern::config::ServeFlags;
use lantern::engine::device;
use lantern::engine::generate::{generate, Event, GenerateRequest, GenerationStats};
use lantern::engine::sampler::SamplingParams;
use lantern::engine::template::ChatMessage;
use lantern::library::pull::{pull, PullRequest, DEFAULT_ENDPOINT};
use lantern::library::Library;
use lantern::{ChatModel, Config, Launch};

#[derive(Debug, Parser)]
#[command(
    name = "lantern",
    version,
    about = "Serve and tune language models on your own machine"
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Chat with a model in the terminal: one answer for PROMPT, or an interactive chat.
    Run(RunArgs),
    /// Serve the OpenAI-compatible API (`/v1/...`) and the UI (`/`) for a model. Settings come
    /// from settings.toml in the data directory (the UI's Settings page); flags win over it.
    Serve(ServeFlags),
    /// List installed models.
    Models {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a GGUF from Hugging Face: `pull smollm2` or `pull OWNER/REPO FILE`.
    Pull {
        /// A model name from the manifest, or a Hugging Face repo.
        target: String,
        /// The file in the repo (not needed for manifest names).
        file: Option<String>,
        /// Name to install it under (default: the manifest name or the repo's name).
        #[arg(long)]
        name: Option<String>,
        /// Hugging Face endpoint (mirrors).
        #[arg(long, env = "LANTERN_HF_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
        endpoint: String,
    },
    /// Benchmark a model (or synthetic:1b|3b|8b) on the device: llama-bench's pp512 and tg128,
    /// batched decode, TTFT, each against the hardware's measured ceiling.
    Bench(cli::bench::BenchArgs),
    /// Write other quantizations of an installed model as variants (`NAME-q8_0`, ...).
    Quantize(cli::lab::QuantizeArgs),
    /// How far a variant drifts from a reference: KL divergence, top-1 agreement, perplexity.
    Quality(cli::lab::QualityArgs),
    /// Run an experiment on a running server: variants side by side on a prompt set.
    Compare(cli::lab::CompareArgs),
    /// List the CPU, memory and GPUs.
    Devices {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Installed model name (see `lantern models`) or a path to a .gguf file.
    model: String,
    /// The prompt; without it, an interactive chat starts.
    prompt: Option<String>,
    /// System prompt.
    #[arg(long, env = "LANTERN_SYSTEM")]
    system: Option<String>,
    /// 0 is greedy.
    #[arg(long, env = "LANTERN_TEMPERATURE", default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, env = "LANTERN_TOP_K", default_value_t = 40)]
    top_k: usize,
    #[arg(long, env = "LANTERN_TOP_P", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, env = "LANTERN_MIN_P", default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, env = "LANTERN_REPEAT_PENALTY", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Same seed and prompt, same answer.
    #[arg(long, env = "LANTERN_SEED")]
    seed: Option<u64>,
    #[arg(long, env = "LANTERN_MAX_TOKENS", default_value_t = 512)]
    max_tokens: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let _telemetry = lantern::config::init_logging(&cli.config)?;
    let home = cli.config.home();
    match cli.command {
        Command::Run(args) => run(&cli.config, args),
        Command::Serve(args) => serve(&cli.config, args),
        Command::Models { json } => models(&Library::new(&home), json),
        Command::Bench(args) => cli::bench::bench(&cli.config, args),
        Command::Devices { json } => cli::bench::devices(json),
        Command::Quantize(args) => cli::lab::quantize(&cli.config, args),
        Command::Quality(args) => cli::lab::quality(&cli.config, args),
        Command::Compare(args) => cli::lab::compare(&cli.config, args),
        Command::Pull {
            target,
            file,
            name,
            endpoint,
        } => {
            let path = pull(
                &home,
                &PullRequest {
                    target,
                    file,
                    name,
                    endpoint,
                    show_progress: true,
                },
            )?;
            println!("installed {}", path.display());
            Ok(())
        }
    }
}

fn serve(config: &Config, flags: ServeFlags) -> Result<()> {
    let launch = Launch::new(config.clone(), flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = launch.bind().await.with_context(|| {
            format!(
                "listening on {}:{} (another program has the port? give --port)",
                launch.settings.host, launch.settings.port
            )
        })?;
        let server = launch.start(listener).await?;
        // Caught before the line below: a script may signal as soon as it reads it.
        let signals = lantern::server::shutdown_signal();
        // Tests and scripts read this line to find the port.
        println!("listening on http://{}/v1", server.addr());
        std::io::stdout().flush()?;
        server.run_until(signals).await
    })
}

/// Load a model by name or path; the name is what the API calls it.
fn load(config: &Config, model: &str) -> Result<(ChatModel, String)> {
    device::set_cpu_threads(config.threads);
    let (device, note) = device::open(&config.device);
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let path = Library::new(&config.home()).resolve_gguf(model)?;
    let loaded =
        ChatModel::load(&path, &device).with_context(|| format!("loading {}", path.display()))?;
    Ok((loaded, lantern::library::served_name(model, &path)))
}

fn models(library: &Library, json: bool) -> Result<()> {
    let models = library.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&models)?);
        return Ok(());
    }
    if models.is_empty() {
        println!(
            "no models in {} (run `models/fetch` or `lantern pull smollm2`)",
            library.models_dir().display()
        );
        return Ok(());
    }
    println!(
        "{:<16} {:>9}  {:<12} {:<14} {:>8}  FILE",
        "NAME", "SIZE", "QUANT", "ARCH", "CONTEXT"
    );
    for m in models {
        let ctx = m
            .context_length
            .map(|c| c.to_string())
            .unwrap_or("-".into());
        println!(
            "{:<16} {:>9}  {:<12} {:<14} {:>8}  {}{}",
            m.name,
            format!("{:.1} MB", m.size_bytes as f64 / 1e6),
            m.quantization,
            m.architecture,
            ctx,
            m.path.display(),
            m.error
                .map(|e| format!("  (unreadable: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn run(config: &Config, args: RunArgs) -> Result<()> {
    let (model, _) = load(config, &args.model)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.as_str()));
    }
    if let Some(prompt) = &args.prompt {
        messages.push(ChatMessage::new("user", prompt.as_str()));
        let (_, stats) = answer(&model, &messages, &sampling, args.max_tokens)?;
        print_figures(&stats, &model);
        return Ok(());
    }
    eprintln!("chatting with {} (Ctrl-D to quit)", args.model);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let (reply, stats) = answer(&model, &messages, &sampling, args.max_tokens)?;
        messages.push(ChatMessage::new("assistant", reply));
        print_figures(&stats, &model);
    }
    Ok(())
}

fn answer(
    model: &ChatModel,
    messages: &[ChatMessage],
    sampling: &SamplingParams,
    max_tokens: usize,
) -> Result<(String, GenerationStats)> {
    let request = GenerateRequest {
        prompt: model.chat_prompt(messages)?,
        max_tokens,
        sampling: sampling.clone(),
        stop: Vec::new(),
    };
    let mut reply = String::new();
    let mut out = std::io::stdout().lock();
    let stats = generate(model, &request, |event| {
        if let Event::Text(text) = event {
            reply.push_str(text);
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    })?;
    writeln!(out)?;
    Ok((reply, stats))
}

fn print_figures(stats: &GenerationStats, model: &ChatModel) {
    eprintln!(
        "[prompt {} tokens, {:.1} tok/s | generated {} tokens, {:.1} tok/s | load {:.2} s | finish: {:?}]",
        stats.prompt_tokens,
        stats.prompt_tokens_per_second(),
        stats.completion_tokens,
        stats.generation_tokens_per_second(),
        model.load_time.as_secs_f64(),
        stats.finish_reason,
    );
}
