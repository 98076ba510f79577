//! Command-line helpers shared by the examples (each uses some of them).
#![allow(dead_code)]

use candle_core::Device;

/// The value after `name` in `args`, parsed, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> candle_core::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        spec => Device::new_cuda(
            spec.strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        ),
    }
}

/// Peak resident set size in MiB (`VmHWM`), Linux only.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
