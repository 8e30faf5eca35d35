//! `zlayer train pelc`: DecFormer on SA-Z-synth pairs, against the frozen VAE.

use super::loop_config;
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::pelc::{
    LossWeights, PixelTarget, check_size, config_of, fits, gate, loss, pair, tensors,
};
use zlayer_app::report::Progress;
use zlayer_model::pelc::{DecConfig, DecFormer};
use zlayer_model::train::{parameters, train_loop};

/// Flags of `zlayer train pelc`.
#[derive(Debug, Args)]
pub struct PelcArgs {
    /// The trained VAE whose latents are blended (its .json beside it); it stays frozen.
    #[arg(long, default_value = "models/tiny16/vae.safetensors")]
    vae: PathBuf,
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Total optimisation steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Image pairs per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Steps of the first stage, α only (the residual s gated off).
    #[arg(long, default_value_t = 1500)]
    alpha_steps: usize,
    /// Steps over which the residual's gate then rises from 0 to 1.
    #[arg(long, default_value_t = 500)]
    warmup_s: usize,
    /// λ_E, the weight of the latent MSE.
    #[arg(long, default_value_t = 1.0)]
    latent_weight: f64,
    /// Extra weight of the halo band in the pixel L1 (1 + this inside the band).
    #[arg(long, default_value_t = 4.0)]
    halo_weight: f64,
    /// λ_G, the weight of the pixel-gradient L1 (our stand-in for LPIPS).
    #[arg(long, default_value_t = 1.0)]
    gradient_weight: f64,
    /// What the decoded blend is trained to match: `round-trip`, the VAE's rendering
    /// D(E(x)) of the composite x of the two images, or `composite`, the composite of the
    /// decoded inputs (1 − m)·D(z_A) + m·D(z_B) that `eval-pelc` scores against.
    #[arg(long, default_value = "round-trip", value_parser = str::parse::<PixelTarget>)]
    pixel_target: PixelTarget,
    /// Start from this trained DecFormer (pelc.safetensors, its .json beside it) instead of
    /// fresh weights; its config is kept and the optimiser starts afresh. A checkpoint in
    /// --out still wins, so a resumed run goes on where it stopped.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Grow the --init DecFormer by this many patch-1 blocks after its own. Each starts
    /// with a zero write-back, so the grown model begins as exactly the one it grew from.
    #[arg(long, default_value_t = 0, requires = "init")]
    add_blocks: usize,
    /// Widen the --init DecFormer's feature map by this many channels. What reads them
    /// starts at zero, so the grown model begins as (up to rounding) the one it grew from.
    #[arg(long, default_value_t = 0, requires = "init")]
    add_features: usize,
    /// Data seed (evaluation uses seed + 1,000,000).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs the command.
pub fn run(a: PelcArgs) -> Result<(), Failure> {
    if a.batch == 0 || a.steps == 0 {
        return Err(Failure::User("--batch and --steps must be positive".into()));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::User(format!("{}: {e}", a.out.display())))?;
    let dev = Device::Cpu;
    let (vae, size) = zlayer_app::model::vae_file(&a.vae, &dev)?;
    let size = size as usize;
    check_size(size, vae.cfg.factor())?;
    let factor = vae.cfg.factor();
    let trained = match &a.init {
        Some(path) => {
            let (cfg, _) = config_of(&zlayer_model::bundle::Source::File(path.clone()))?;
            fits(&cfg, &vae.cfg).map_err(|e| {
                Failure::User(format!(
                    "--init {}: {e} ({})",
                    path.display(),
                    a.vae.display()
                ))
            })?;
            Some((path, cfg))
        }
        None => None,
    };
    let cfg = match &trained {
        Some((_, cfg)) => cfg.grown(a.add_blocks, a.add_features),
        None => DecConfig {
            latent: vae.cfg.latent,
            factor,
            // One stride-2 convolution per halving, widening as the tiny preset's do.
            prior: (0..factor.trailing_zeros()).map(|k| 16 << k).collect(),
            // The halo band: 2 px at 64 px (the paper's 8 px at 512, widened for our VAE's reach).
            halo_px: (size / 32).max(1),
            ..DecConfig::tiny()
        },
    };
    let vm = candle_nn::VarMap::new();
    let dec = DecFormer::new(
        &cfg,
        zlayer_model::init::seeded(&vm, a.seed, DType::F32, &dev),
    )
    .map_err(|e| Failure::User(format!("DecFormer for {}: {e}", a.vae.display())))?;
    if let Some((path, from)) = &trained {
        zlayer_model::pelc::load_grown(&vm, path, from, &cfg).map_err(Failure::User)?;
    }
    let weights = LossWeights {
        latent: a.latent_weight,
        halo: a.halo_weight,
        gradient: a.gradient_weight,
        target: a.pixel_target,
    };
    let lc = loop_config(a.steps, a.lr);
    let meta = serde_json::json!({"kind": "pelc", "config": cfg, "vae": a.vae, "image_size": size, "loss": weights, "alpha_steps": a.alpha_steps, "warmup_s": a.warmup_s, "init": a.init, "seed": a.seed, "batch": a.batch, "loop": lc, "parameters": parameters(&vm)});
    eprintln!(
        "DecFormer: {} parameters on {}",
        parameters(&vm),
        a.vae.display()
    );
    let bar = Progress::new(a.steps);
    let start = std::time::Instant::now();
    let trainer = train_loop(
        &a.out,
        "pelc",
        &vm,
        &lc,
        &meta,
        &dev,
        |step| {
            let first = (step * a.batch) as u64;
            let pairs: Vec<_> = (0..a.batch as u64)
                .map(|i| pair(a.seed, first + i, size as u32))
                .collect();
            let batch = tensors(&pairs, size, &dev)?;
            let g = gate(step, a.alpha_steps, a.warmup_s);
            let (total, [latent, halo, grad]) = loss(&dec, &vae, &batch, g, weights)?;
            Ok((
                total,
                vec![
                    ("latent".into(), latent),
                    ("pixel_l1".into(), halo),
                    ("gradient".into(), grad),
                    ("gate".into(), g as f32),
                ],
            ))
        },
        |log| {
            super::show_step(
                &bar,
                &a.out,
                "pelc",
                lc.checkpoint_every,
                log,
                &["latent", "gate"],
            )
        },
    )
    .map_err(Failure::Internal)?;
    bar.finish();
    super::export_run(&a.out, "pelc", &trainer, meta, start)?;
    Ok(())
}
