//! NVIDIA GPUs through NVML, loaded at run time: a machine without the driver gets an empty list
//! and the reason, never a failure.

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use serde::Serialize;

/// One GPU as NVML reports it now. Figures a GPU does not report are None.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub compute_capability: Option<String>,
    pub cuda_cores: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub utilization_percent: Option<u32>,
    pub memory_utilization_percent: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    pub max_sm_clock_mhz: Option<u32>,
    pub max_memory_clock_mhz: Option<u32>,
    pub memory_bus_width_bits: Option<u32>,
    /// Peak memory bandwidth from the bus width and the top memory clock (double data rate).
    pub theoretical_bandwidth_gbs: Option<f64>,
}

/// The driver's versions and its GPUs.
#[derive(Debug, Clone, Serialize)]
pub struct NvidiaReport {
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    pub gpus: Vec<Gpu>,
}

/// Every NVIDIA GPU, or why there are none to list (no driver, NVML failed).
pub fn probe() -> Result<NvidiaReport, String> {
    let nvml = Nvml::init().map_err(|e| format!("NVIDIA driver not found (NVML: {e})"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML could not count GPUs: {e}"))?;
    let gpus = (0..count)
        .filter_map(|i| match nvml.device_by_index(i) {
            Ok(d) => Some(read(i, &d)),
            Err(e) => {
                tracing::warn!(index = i, error = %e, "GPU not readable");
                None
            }
        })
        .collect();
    Ok(NvidiaReport {
        driver_version: nvml.sys_driver_version().ok(),
        cuda_version: nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
        gpus,
    })
}

fn read(index: u32, d: &nvml_wrapper::Device) -> Gpu {
    let memory = d.memory_info().ok();
    let utilization = d.utilization_rates().ok();
    let max_mem_clock = d.max_clock_info(Clock::Memory).ok();
    let bus = d.memory_bus_width().ok();
    Gpu {
        index,
        name: d.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
        uuid: d.uuid().ok(),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        compute_capability: d
            .cuda_compute_capability()
            .ok()
            .map(|c| format!("{}.{}", c.major, c.minor)),
        cuda_cores: d.num_cores().ok(),
        temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
        power_watts: d.power_usage().ok().map(|mw| mw as f64 / 1e3),
        power_limit_watts: d.enforced_power_limit().ok().map(|mw| mw as f64 / 1e3),
        utilization_percent: utilization.as_ref().map(|u| u.gpu),
        memory_utilization_percent: utilization.as_ref().map(|u| u.memory),
        sm_clock_mhz: d.clock_info(Clock::SM).ok(),
        memory_clock_mhz: d.clock_info(Clock::Memory).ok(),
        max_sm_clock_mhz: d.max_clock_info(Clock::SM).ok(),
        max_memory_clock_mhz: max_mem_clock,
        memory_bus_width_bits: bus,
        theoretical_bandwidth_gbs: max_mem_clock
            .zip(bus)
            .map(|(mhz, bits)| 2.0 * mhz as f64 * 1e6 * bits as f64 / 8.0 / 1e9),
    }
}
