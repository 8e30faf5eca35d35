//! Choosing where the big model runs.

use crate::Failure;
use candle_core::Device;

/// The device named by `--device` (cuda, cpu), else CUDA when built with it and the CPU otherwise.
pub fn device(name: Option<&str>) -> Result<Device, Failure> {
    match name {
        Some("cpu") => Ok(Device::Cpu),
        Some("cuda") | None if cfg!(feature = "cuda") => Device::new_cuda(0)
            .map_err(|e| Failure::User(format!("--device cuda: no usable GPU ({e})"))),
        Some("cuda") => Err(Failure::User(
            "--device cuda: this zlayer was built without CUDA; rebuild with `cargo build --release --features cuda` (DESIGN.md §6) or use --device cpu".into(),
        )),
        None => Ok(Device::Cpu),
        Some(other) => Err(Failure::User(format!(
            "--device {other:?}: expected cuda or cpu"
        ))),
    }
}
