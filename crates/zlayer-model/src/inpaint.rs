//! Sampling that keeps a known latent (DESIGN.md §4.4, PELC as an inpainting prior).
//!
//! Where `keep` is 1 the velocity is re-targeted to v* = (z_t − z₀*)/t. On the straight path
//! z_t = (1 − t)·z₀* + t·ε that is exactly ε − z₀*, so every Euler step stays on that path
//! and the known region ends on z₀* whatever the model says; where `keep` is 0 the model
//! draws. Starting below t = 1 from z₀* noised to that time refines a composite instead of
//! drawing from scratch.

use crate::sampling::denoise_steps;
use candle_core::{Result, Tensor};

/// A latent that sampling must end on where `keep` is 1.
#[derive(Debug, Clone)]
pub struct Known {
    /// The latent to end on, shaped like the sample (e.g. tokens (B, L, C)).
    pub latent: Tensor,
    /// Where to keep it, in [0, 1], broadcast over the sample (e.g. (B, L, 1)).
    pub keep: Tensor,
    /// The time sampling starts at: 1 draws from pure noise; below 1 starts from `latent`
    /// noised to the first scheduled time at or below it.
    pub start: f64,
}

impl Known {
    /// The model's velocity `v` at (x, t) with the kept region re-targeted to `latent`.
    pub fn retarget(&self, v: &Tensor, x: &Tensor, t: f64) -> Result<Tensor> {
        if t <= 0.0 {
            return Ok(v.clone());
        }
        let target = ((x - &self.latent)? / t)?;
        v + self.keep.broadcast_mul(&(target - v)?)?
    }

    /// The index of the first scheduled time at or below `start`.
    pub fn first_step(&self, times: &[f64]) -> usize {
        times
            .iter()
            .position(|&t| t <= self.start + 1e-12)
            .unwrap_or(times.len().saturating_sub(1))
    }
}

/// [`denoise_steps`] from noise `eps` keeping `known` (plain sampling when `None`); the
/// field still gets each step's index in the whole schedule, so step-dependent methods
/// (the grounding ratio) act as they would from t = 1.
pub fn denoise_known(
    field: impl Fn(&Tensor, f64, usize) -> Result<Tensor>,
    eps: Tensor,
    times: &[f64],
    known: Option<&Known>,
) -> Result<Tensor> {
    let Some(known) = known else {
        return denoise_steps(field, eps, times);
    };
    let k0 = known.first_step(times);
    let t0 = times[k0];
    let x = if t0 >= 1.0 {
        eps
    } else {
        ((&known.latent * (1.0 - t0))? + (eps * t0)?)?
    };
    denoise_steps(
        |x: &Tensor, t, k| known.retarget(&field(x, t, k + k0)?, x, t),
        x,
        &times[k0..],
    )
}
