//! `lantern bench`'s output: llama-bench's markdown table with a roofline column, and the
//! ceilings under it.

use super::bench::BenchResult;

/// llama-bench's markdown table, with the roofline column.
pub fn markdown(r: &BenchResult) -> String {
    let gib = r.model.file_bytes as f64 / (1u64 << 30) as f64;
    let params = r.model.params as f64;
    let params = if params >= 1e9 {
        format!("{:.2} B", params / 1e9)
    } else {
        format!("{:.2} M", params / 1e6)
    };
    let mut out = String::from(
        "| model | size | params | backend | threads | test | t/s | roofline |\n\
         | ----- | ---: | -----: | ------- | ------: | ---- | --: | -------: |\n",
    );
    for s in &r.speeds {
        out.push_str(&format!(
            "| {} {} | {gib:.2} GiB | {params} | {} | {} | {} | {:.2} ± {:.2} | {:.0}% of {:.1} ({}) |\n",
            r.model.name,
            r.model.quantization,
            r.device.to_uppercase(),
            r.threads,
            s.test,
            s.tokens_per_second.mean,
            s.tokens_per_second.sd,
            100.0 * s.roofline_fraction,
            s.roofline_tokens_per_second,
            s.bound,
        ));
    }
    out.push_str(&format!(
        "\nTTFT ({} tokens): {:.1} ± {:.1} ms · read bandwidth {:.1} GB/s ({}) over {:.0} MB · copy {:.1} GB/s · matmul GFLOP/s {} · peak RSS {}\n",
        r.options.ttft_prompt,
        r.ttft_ms.mean,
        r.ttft_ms.sd,
        r.ceilings.read_bandwidth_bytes_per_s / 1e9,
        r.ceilings.bandwidth_source,
        r.model.weight_bytes_per_token as f64 / 1e6,
        r.ceilings.copy_bandwidth_bytes_per_s / 1e9,
        r.ceilings
            .matmul_by_type
            .iter()
            .map(|t| format!("{} {:.1}", t.dtype, t.flops_per_s / 1e9))
            .collect::<Vec<_>>()
            .join(", "),
        r.peak_rss_bytes
            .map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)),
    ));
    if let Some(note) = &r.device_note {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    out
}
