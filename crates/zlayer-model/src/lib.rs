//! zlayer's models in candle. The same block code runs the `tiny` CPU preset and the
//! Flux.1-dev shape.
//!
//! - [`base`]: the text-to-image base model (DiT + text encoder) and its flow loss and sampler.
//! - [`bundle`]: model files (f16 safetensors + JSON) and latent normalisation.
//! - [`config`]: shapes as data, with presets.
//! - [`layers`]: differentiable building blocks (norms, RoPE, attention, modulation).
//! - [`dit`]: the Flux-style MM-DiT.
//! - [`text`]: word-level tokenizer and the tiny text encoder.
//! - [`vae`]: the small KL autoencoder (nearest-then-conv upsampling).
//! - [`optim`]: AdamW with saved state, clipping, warmup/cosine, EMA, exact-resume checkpoints.
//! - [`train`]: training loops (data as a function of the step), PSNR, latent statistics, f16 export.
//! - [`sampling`]: rectified flow: noise, schedule, Euler `denoise`, guidance, training pairs.
#![warn(missing_docs)]

pub mod base;
pub mod bundle;
pub mod config;
pub mod dit;
pub mod layers;
pub mod optim;
pub mod sampling;
pub mod text;
pub mod train;
pub mod vae;

pub use config::Config;
pub use dit::{Flux, FluxInput};
