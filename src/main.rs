//! The `lantern` command line.

mod cli;

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lantern::engine::device;
use lantern::engine::generate::{generate, Event, GenerateRequest, GenerationStats};
use lantern::engine::sampler::SamplingParams;
use lantern::engine::template::ChatMessage;
use lantern::library::pull::{pull, PullRequest, DEFAULT_ENDPOINT};
use lantern::library::Library;
use lantern::scheduler::batch::Budgets;
use lantern::scheduler::{EngineConfig, KeepAlive, Registry, RegistryConfig};
use lantern::server::guard::ApiKeys;
use lantern::server::AppState;
use lantern::{ChatModel, Config};

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
    /// Serve the OpenAI-compatible API (`/v1/...`) for a model.
    Serve(ServeArgs),
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
struct ServeArgs {
    /// Installed model name or a path to a .gguf file.
    #[arg(default_value = "smollm2", env = "LANTERN_MODEL")]
    model: String,
    /// Address to listen on. Anything but loopback needs at least one API key.
    #[arg(long, env = "LANTERN_HOST", default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// An accepted API key (`Authorization: Bearer KEY`); repeatable.
    #[arg(long = "api-key", env = "LANTERN_API_KEY")]
    api_keys: Vec<String>,
    /// A file with one accepted API key per line (`#` starts a comment).
    #[arg(long, env = "LANTERN_API_KEY_FILE")]
    api_key_file: Option<std::path::PathBuf>,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, env = "LANTERN_PORT", default_value_t = 8080)]
    port: u16,
    /// Requests that may wait beyond the running set before new ones get 429.
    #[arg(long, env = "LANTERN_MAX_WAITING", default_value_t = 64)]
    max_waiting: usize,
    /// Sequences batched together per model (continuous batching).
    #[arg(long, env = "LANTERN_MAX_SEQS", default_value_t = 32)]
    max_seqs: usize,
    /// Tokens in one forward pass: decodes of every running sequence plus prefill chunks.
    #[arg(long, env = "LANTERN_MAX_STEP_TOKENS", default_value_t = 512)]
    max_step_tokens: usize,
    /// Prompt tokens of one sequence per step (long prompts never stall running streams).
    #[arg(long, env = "LANTERN_PREFILL_CHUNK", default_value_t = 256)]
    prefill_chunk: usize,
    /// MiB of KV cache per model for running sequences; beyond it the newest sequence waits.
    #[arg(long, env = "LANTERN_KV_MEMORY_MIB", default_value_t = 1024)]
    kv_memory_mib: usize,
    /// MiB of KV per model kept for prompt-prefix reuse (0: no prefix cache).
    #[arg(long, env = "LANTERN_PREFIX_CACHE_MIB", default_value_t = 512)]
    prefix_cache_mib: usize,
    /// Models loaded at once; the least recently used idle one unloads to make room.
    #[arg(long, env = "LANTERN_MAX_LOADED", default_value_t = 3)]
    max_loaded: usize,
    /// How long a model stays loaded after its last request, unless the request says
    /// (`keep_alive`): seconds, `5m`, `1h`, `-1` forever, `0` unload at once.
    #[arg(long, env = "LANTERN_KEEP_ALIVE", default_value = "5m", value_parser = parse_keep_alive, allow_hyphen_values = true)]
    keep_alive: KeepAlive,
    /// A keep-alive that wins over what requests say.
    #[arg(long, env = "LANTERN_KEEP_ALIVE_OVERRIDE", value_parser = parse_keep_alive, allow_hyphen_values = true)]
    keep_alive_override: Option<KeepAlive>,
    /// More models to load at start and keep loaded (the warm set), comma-separated.
    #[arg(long, env = "LANTERN_PRELOAD", value_delimiter = ',')]
    preload: Vec<String>,
    /// MiB of memory to leave free when loading a model; a load that would not fit is refused.
    #[arg(long, env = "LANTERN_RESERVE_MEMORY_MIB", default_value_t = 256)]
    reserve_memory_mib: u64,
    /// Browser origins allowed to call the API (CORS), besides the desktop app's own; repeatable.
    #[arg(long = "cors-origin", env = "LANTERN_CORS_ORIGIN")]
    cors_origins: Vec<String>,
    /// Seconds a request may take before it is stopped with a 504.
    #[arg(long, env = "LANTERN_REQUEST_TIMEOUT", default_value_t = 600)]
    request_timeout: u64,
    /// Requests per minute per API key (0: unlimited).
    #[arg(long, env = "LANTERN_RATE_LIMIT_RPM", default_value_t = 0)]
    rate_limit_rpm: u64,
    /// Prompt + completion tokens per minute per API key (0: unlimited).
    #[arg(long, env = "LANTERN_RATE_LIMIT_TPM", default_value_t = 0)]
    rate_limit_tpm: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "LANTERN_BODY_LIMIT", default_value_t = lantern::server::DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// The SQLite database (default: lantern.db in the data directory). If it cannot be opened
    /// the server still runs, without what it keeps there.
    #[arg(long, env = "LANTERN_DB")]
    db: Option<std::path::PathBuf>,
    /// MiB of embedding vectors kept in memory (level 1 of the embedding cache).
    #[arg(long, env = "LANTERN_EMBEDDING_CACHE_MIB", default_value_t = 64)]
    embedding_cache_mib: usize,
    /// MiB of embedding vectors kept in the database (level 2), least recently used dropped first.
    #[arg(long, env = "LANTERN_EMBEDDING_STORE_MIB", default_value_t = 1024)]
    embedding_store_mib: u64,
    /// MiB of whole responses kept for deterministic requests (temperature 0 or a seed); 0: off.
    #[arg(long, env = "LANTERN_RESPONSE_CACHE_MIB", default_value_t = 64)]
    response_cache_mib: usize,
    /// Seconds a cached response stays valid.
    #[arg(long, env = "LANTERN_RESPONSE_CACHE_TTL", default_value_t = 3600)]
    response_cache_ttl: u64,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LANTERN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let home = cli.config.home();
    match cli.command {
        Command::Run(args) => run(&cli.config, args),
        Command::Serve(args) => serve(&cli.config, args),
        Command::Models { json } => models(&Library::new(&home), json),
        Command::Bench(args) => cli::bench::bench(&cli.config, args),
        Command::Devices { json } => cli::bench::devices(json),
        Command::Quantize(args) => cli::lab::quantize(&cli.config, args),
        Command::Quality(args) => cli::lab::quality(&cli.config, args),
        Command::Compare(args) => cli::lab::compare(args),
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

fn serve(config: &Config, args: ServeArgs) -> Result<()> {
    let keys = ApiKeys::from_sources(&args.api_keys, args.api_key_file.as_deref())
        .context("reading --api-key-file")?;
    anyhow::ensure!(
        args.host.is_loopback() || !keys.is_empty(),
        "refusing to listen on {} without an API key: anyone on the network could use it; \
         give --api-key or --api-key-file, or use --host 127.0.0.1",
        args.host
    );
    device::set_cpu_threads(config.threads);
    let (device, note) = device::open(&config.device);
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let library = Library::new(&config.home());
    let path = library.resolve_gguf(&args.model)?;
    let name = model_name(&args.model, &path);
    let embedders = lantern::scheduler::embedder::Embedders::new(library.clone(), device.clone());
    let engines = Registry::new(
        library,
        RegistryConfig {
            engine: EngineConfig {
                budgets: Budgets {
                    max_seqs: args.max_seqs.max(1),
                    max_step_tokens: args.max_step_tokens.max(args.max_seqs).max(1),
                    prefill_chunk: args.prefill_chunk.max(1),
                    kv_tokens: 0,
                },
                kv_memory: args.kv_memory_mib.max(1) << 20,
                prefix_cache_memory: args.prefix_cache_mib << 20,
                max_waiting: args.max_waiting,
            },
            max_loaded: args.max_loaded.max(1),
            keep_alive: args.keep_alive,
            keep_alive_override: args.keep_alive_override,
            reserve_memory: args.reserve_memory_mib << 20,
            device,
        },
    );
    engines.add_alias(&name, &path);
    let cors_origins = lantern::server::APP_ORIGINS
        .iter()
        .map(|s| s.to_string())
        .chain(args.cors_origins.iter().cloned())
        .map(|o| {
            o.parse()
                .with_context(|| format!("bad --cors-origin `{o}`"))
        })
        .collect::<Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let db_path = args
        .db
        .clone()
        .unwrap_or_else(|| config.home().join("lantern.db"));
    runtime.block_on(async {
        let store = match lantern::store::Store::open(&db_path).await {
            Ok(store) => Some(store),
            Err(e) => {
                eprintln!(
                    "warning: {e}; running without the database (no embedding cache on disk, \
                     no request log)"
                );
                None
            }
        };
        let (monitor, monitor_writer) = lantern::monitor::Monitor::open(store.clone()).await;
        let monitor_store = store.clone();
        let caches = lantern::cache::Caches {
            embeddings: std::sync::Arc::new(lantern::cache::EmbeddingCache::new(
                args.embedding_cache_mib << 20,
                store,
                args.embedding_store_mib << 20,
            )),
            responses: std::sync::Arc::new(lantern::cache::ResponseCache::new(
                args.response_cache_mib << 20,
                std::time::Duration::from_secs(args.response_cache_ttl),
            )),
        };
        let state = AppState {
            engines: engines.clone(),
            embedders,
            caches,
            monitor,
            default_model: name.clone(),
            body_limit: args.body_limit,
            keys,
            cors_origins,
            request_timeout: std::time::Duration::from_secs(args.request_timeout.max(1)),
            rate: lantern::server::rate::RateLimiter::new(lantern::server::rate::Limits {
                requests_per_minute: args.rate_limit_rpm,
                tokens_per_minute: args.rate_limit_tpm,
            }),
            jobs: lantern::jobs::Jobs::default(),
            pairs: Default::default(),
            compression: std::sync::Arc::new(
                lantern::compress::SessionDefaults::open(monitor_store.clone()).await,
            ),
        };
        // The default model and the warm set load (and warm up) before the server listens.
        let mut warm_set = vec![name.clone()];
        warm_set.extend(args.preload.iter().filter(|p| **p != name).cloned());
        engines.preload(&warm_set).await?;
        for m in engines.loaded() {
            eprintln!(
                "loaded {} in {:.2} s, warmed up in {:.2} s",
                m.id,
                m.load_ms / 1e3,
                m.warmup_ms / 1e3
            );
        }
        engines.spawn_reaper(std::time::Duration::from_millis(200));
        let listener = tokio::net::TcpListener::bind((args.host, args.port)).await?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to find the port.
        println!("listening on http://{addr}/v1");
        std::io::stdout().flush()?;
        lantern::server::serve(listener, state).await?;
        // Every handle is gone with the server: the request log writes what is queued.
        if let Some(writer) = monitor_writer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), writer).await;
        }
        Ok(())
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
    Ok((loaded, model_name(model, &path)))
}

/// What the API calls a model given by name or by path (the file's stem).
fn model_name(model: &str, path: &std::path::Path) -> String {
    if model.ends_with(".gguf") {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| model.to_string())
    } else {
        model.to_string()
    }
}

fn parse_keep_alive(s: &str) -> Result<KeepAlive, String> {
    KeepAlive::parse_str(s)
        .ok_or_else(|| format!("`{s}` is not seconds, -1, or a duration like 5m, 90s, 1h"))
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
