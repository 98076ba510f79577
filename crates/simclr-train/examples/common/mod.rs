//! Command-line helpers shared by the examples.

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
