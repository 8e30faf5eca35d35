//! `zlayer train alpha-vae`: the RGBA VAE, opaque-initialised from a trained RGB VAE.

use super::loop_config;
use candle_core::Device;
use candle_core::Tensor;
use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::report::Progress;
use zlayer_model::alpha::{from_rgb, loss, opaque_drift, rgba_config};
use zlayer_model::sampling::noise;
use zlayer_model::train::{export_f16, load_weights, train_loop};
use zlayer_model::vae::Vae;

/// Flags of `zlayer train alpha-vae`.
#[derive(Debug, Args)]
pub struct AlphaVaeArgs {
    /// The trained RGB VAE to start from (its .json beside it): an opaque image round-trips
    /// exactly as through it at step 0.
    #[arg(long, default_value = "models/tiny16/vae.safetensors")]
    from: PathBuf,
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Total optimisation steps.
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Samples per step: whole opaque images and amodal RGBA layers, alternately.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate (lower than from scratch: it starts from a trained model).
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// KL weight.
    #[arg(long, default_value_t = 1e-4)]
    beta: f64,
    /// Weight of the opaque drift: the squared distance of the RGBA encoder's latents of
    /// opaque images from the RGB VAE's, so base models trained on those latents keep
    /// working (0: free).
    #[arg(long, default_value_t = 1.0)]
    keep_opaque: f64,
    /// Data seed; held-out scenes use seed + 1,000,000.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out scenes scored at the end (every instance layer of each).
    #[arg(long, default_value_t = 32)]
    heldout: usize,
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Internal(e.to_string())
}

/// Runs the command.
pub fn run(a: AlphaVaeArgs) -> Result<(), Failure> {
    if a.batch == 0 || a.steps == 0 {
        return Err(Failure::User("--batch and --steps must be positive".into()));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::User(format!("{}: {e}", a.out.display())))?;
    let dev = Device::Cpu;
    let (rgb, size) = zlayer_app::model::vae_file(&a.from, &dev)?;
    let vm = candle_nn::VarMap::new();
    let vae = from_rgb(&vm, &rgb.cfg, &a.from, &dev).map_err(Failure::User)?;
    let cfg = rgba_config(&rgb.cfg);
    let lc = loop_config(a.steps, a.lr);
    let meta = serde_json::json!({"kind": "alpha-vae", "config": cfg, "from": a.from, "beta": a.beta, "keep_opaque": a.keep_opaque, "batch": a.batch, "seed": a.seed, "loop": lc});
    let bar = Progress::new(a.steps);
    let start = std::time::Instant::now();
    let f = cfg.factor();
    let s = size as usize;
    let trainer = train_loop(
        &a.out,
        "vae",
        &vm,
        &lc,
        &meta,
        &dev,
        |step| {
            let x = zlayer_app::alpha::batch(a.seed, (step * a.batch) as u64, a.batch, size, &dev)?;
            let eps = noise(
                (a.batch, cfg.latent, s / f, s / f),
                a.seed.wrapping_add(step as u64),
                &dev,
            )?;
            let (total, comp, kl) = loss(&vae, &x, &eps, a.beta)?;
            let rows = zlayer_app::alpha::opaque_rows(step * a.batch, a.batch);
            let (total, drift) = if a.keep_opaque > 0.0 && !rows.is_empty() {
                let opaque = x.index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?;
                let drift = opaque_drift(&vae, &rgb.vae, &opaque)?;
                (
                    (total + (&drift * a.keep_opaque)?)?,
                    drift.to_scalar::<f32>()?,
                )
            } else {
                (total, 0.0)
            };
            Ok((
                total,
                vec![
                    ("composite".into(), comp.to_scalar::<f32>()?),
                    ("kl".into(), kl.to_scalar::<f32>()?),
                    ("drift".into(), drift),
                ],
            ))
        },
        |log| {
            super::show_step(
                &bar,
                &a.out,
                "vae",
                lc.checkpoint_every,
                log,
                &["composite"],
            )
        },
    )
    .map_err(Failure::Internal)?;
    bar.finish();
    super::plot_loss(&a.out, "vae")?;
    let weights = a.out.join("vae.safetensors");
    export_f16(&trainer.ema(), &weights, &serde_json::json!({})).map_err(Failure::Internal)?;
    let trained = Vae::new(
        &cfg,
        load_weights(&weights, &dev).map_err(Failure::Internal)?,
    )
    .map_err(internal)?;
    let scores = zlayer_app::alpha::evaluate(
        &trained,
        Some(&rgb.vae),
        a.seed + 1_000_000,
        a.heldout.max(1),
        size,
        &dev,
    )
    .map_err(internal)?;
    // The latent normalisation stays the RGB VAE's: opaque latents start out identical.
    let mut meta = meta;
    meta["kind"] = "vae".into();
    meta["latent_shift"] = rgb.shift.into();
    meta["latent_scale"] = rgb.scale.into();
    meta["image_size"] = size.into();
    meta["steps"] = trainer.step.into();
    meta["train_minutes"] = (start.elapsed().as_secs_f64() / 60.0).into();
    meta["heldout"] = serde_json::to_value(&scores).map_err(internal)?;
    export_f16(&trainer.ema(), &weights, &meta).map_err(Failure::Internal)?;
    eprintln!(
        "trained {} steps in {:.1} min; held-out on {} scenes: opaque images {:.2} dB (the RGB VAE {}), layers' opaque pixels {:.2} dB, alpha SAD {:.3} MSE {:.5} Grad {:.3} over {} layers; wrote {}",
        trainer.step,
        start.elapsed().as_secs_f64() / 60.0,
        a.heldout.max(1),
        scores.opaque_psnr,
        scores
            .rgb_vae_psnr
            .map_or("-".into(), |p| format!("{p:.2} dB")),
        scores.layer_opaque_psnr,
        scores.alpha_sad,
        scores.alpha_mse,
        scores.alpha_grad,
        scores.layers,
        weights.display()
    );
    Ok(())
}
