//! Fused CPU kernels with hand-written backward passes, for the ops that dominate a tiny
//! training step: softmax, the parameter-free layer norm, RMS norm, GELU-tanh, RoPE
//! (`norm`); bias, adaLN modulation and the gated residual (`rows`); the split into q/k/v
//! heads (`heads`); and attention itself (`attention`). `op` adapts them to candle.
//!
//! candle composes each of these from 5–15 single-threaded element-wise passes, each with a
//! fresh allocation, and its own fused kernels have no backward (DESIGN.md §6). These run one
//! pass forward and one backward, split over rows with rayon. They apply to contiguous f32
//! tensors on the CPU; any other dtype or device takes the composed form in `layers`, so half
//! precision on CUDA (FLUX.1-dev inference) is unchanged. `tests/fused.rs` checks values and
//! gradients against the composed forms.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use zlayer_composite::with_avx2_fma;

mod attention;
mod heads;
mod norm;
mod op;
mod rows;

pub(crate) use attention::bias_fits;
pub use attention::{attention, attention_stacked};
pub use heads::qkv_heads;
pub use norm::{gelu, layer_norm, rms_norm, rope, softmax_last};
pub use rows::{add_bias, gate_add, modulate};

/// Elements per rayon task: below this, splitting costs more than it saves.
const GRAIN: usize = 1 << 14;

/// `eˣ` for f32 in plain arithmetic, so that loops over rows vectorise (libm's `expf` is a
/// call per element): range reduction by ln 2 and a degree-7 Taylor polynomial, relative
/// error ~1e-7. Inputs are clamped to [−87, 88], so masked scores (−1e9) give ~1e-38, not 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer without a call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits((((n as i32) + 127) as u32) << 23)
}

/// Whether `x` takes the fused path.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Runs `f(out_row, row_index)` over rows of `n` in parallel, in tasks of about [`GRAIN`]
/// elements.
fn rows(len: usize, n: usize, f: impl Fn(&mut [f32], usize) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; len];
    let per = (GRAIN / n.max(1)).max(1);
    out.par_chunks_mut(per * n)
        .enumerate()
        .for_each(|(t, chunk)| {
            with_avx2_fma(
                #[inline(always)]
                || {
                    for (i, row) in chunk.chunks_mut(n).enumerate() {
                        f(row, t * per + i);
                    }
                },
            )
        });
    out
}

/// tanh through [`exp`]: glibc's `tanhf` goes through `expm1f` and cost a fifth of a training
/// step. Saturates to ±1; absolute error ~1e-7.
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate_over_its_range_and_clamps_outside() {
        // A dense sweep of [−87, 88]: relative error against f64.
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "relative error {worst:.2e}");
        // Masked scores underflow to (almost) nothing rather than to NaN or garbage.
        assert!(super::exp(-1e9) < 2e-38 && super::exp(-1e9) >= 0.0);
        assert!(super::exp(1e9).is_finite());
        assert!((super::tanh(30.0) - 1.0).abs() < 1e-7 && (super::tanh(-30.0) + 1.0).abs() < 1e-7);
    }
}
