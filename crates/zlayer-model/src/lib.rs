//! zlayer's models in candle. The same block code runs the `tiny` CPU preset and the
//! Flux.1-dev shape.
//!
//! - [`base`]: the text-to-image base model (DiT + text encoder) and its flow loss and sampler.
//! - [`bench`]: the training step and peak sgemm that the speed benchmarks time.
//! - [`branch`]: the layout branch inside the DiT blocks (LoRA, packing, Z-order residual).
//! - [`bundle`]: model files (f16 safetensors + JSON) and latent normalisation.
//! - [`config`]: shapes as data, with presets.
//! - [`larender`]: LaRender, the training-free baseline (per-copy attention, Z-order composition).
//! - [`inpaint`]: sampling that keeps a known latent (velocity re-targeting, §4.4).
//! - [`grpo`]: Flow-GRPO: the SDE sampler, step log-probabilities, advantages, clipped objective.
//! - [`fused`]: one-pass CPU kernels with backward for softmax, norms, GELU and RoPE.
//! - [`layers`]: differentiable building blocks (norms, RoPE, attention, modulation).
//! - [`dit`]: the Flux-style MM-DiT.
//! - [`layout_model`]: stage 2, the frozen base with the layout branch: loss and sampler.
//! - [`layout`]: layout tokens, packed per-instance sequences, Z-order composition.
//! - [`rollout`]: Flow-GRPO rollouts of the layout branch and the policy loss over them.
//! - [`regional`]: per-scene sequences with regional masks, for the `global` baselines.
//! - [`text`]: word-level tokenizer and the tiny text encoder.
//! - [`alpha`]: the alpha-aware RGBA VAE: opaque initialisation from the RGB VAE, composite loss.
//! - [`vae`]: the small KL autoencoder (nearest-then-conv upsampling).
//! - [`omni`]: the multi-task layer model: RGBA latent frames on the RoPE layer axis, a task token.
//! - [`pelc`]: DecFormer, pixel-equivalent latent compositing (per-channel blend and residual).
//! - [`optim`]: AdamW with saved state, clipping, warmup/cosine, EMA, exact-resume checkpoints.
//! - [`train`]: training loops (data as a function of the step), PSNR, latent statistics, f16 export.
//! - [`sampling`]: rectified flow: noise, schedule, Euler `denoise`, guidance, training pairs.
#![warn(missing_docs)]

pub mod alpha;
pub mod base;
pub mod bench;
pub mod branch;
pub mod bundle;
pub mod checkpoint;
pub mod config;
pub mod dit;
pub mod encoders;
pub mod flux_dev;
pub mod fused;
pub mod grpo;
pub mod init;
pub mod inpaint;
pub mod larender;
pub mod layers;
pub mod layout;
pub mod layout_batch;
pub mod layout_model;
pub mod omni;
pub mod optim;
pub mod pelc;
pub mod regional;
pub mod rollout;
pub mod sampling;
pub mod text;
pub mod train;
pub mod vae;

pub use config::Config;

/// Keeps freed tensor buffers in the heap for reuse (glibc only; elsewhere a no-op).
///
/// candle allocates a fresh buffer for every op's output; glibc returns those above 32 MiB
/// to the kernel at once, so each step pays for zeroing fresh pages again (7.7% of a training
/// step's profile, and 18% of its time, measured on the tiny base at batch 16). Call it once,
/// first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters and is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
pub use dit::{Flux, FluxInput};

/// Fixes, once, the thread count that candle's CPU matmul asks for on every call: without
/// `RAYON_NUM_THREADS`, candle 0.11 answers by parsing /proc/cpuinfo (`num_cpus::
/// get_physical`), about 20,000 reads in a 4-second generation benchmark. Sets the variable to
/// the count candle would have chosen, so results and threads are unchanged. Call it first
/// thing in `main`, before any other thread exists.
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // SAFETY: called before other threads exist, so nothing reads the environment while
        // it changes.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// Treats subnormal floats as zero, on input and output (x86's MXCSR DAZ and FTZ bits), on
/// this thread and the threads it starts afterwards.
///
/// Sharp attention drives softmax probabilities and their gradients below 1.2e-38, where
/// every multiply on x86 takes a slow microcode path: the layer model's training step slowed
/// from 3.5 s to 7.2 s over its first 125 steps, 70% of the time in gemm. Call it once,
/// first thing in `main`, before any thread exists. Values that small change no result.
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sets two MXCSR bits that only change how subnormal floats are read and
    // written; called before other threads exist, which inherit the register.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= 0x8040;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
}
