//! Training loops, apart from the model definitions: one straight loop each — resume, step,
//! log, checkpoint — with data given as a function of the step, so that a resumed run sees
//! exactly the batches it would have seen.

use crate::optim::{AdamWConfig, Trainer, lr_at};
use crate::sampling::noise;
use crate::vae::{Vae, VaeConfig};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// What a VAE run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeRun {
    /// Total steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// KL weight.
    pub beta: f64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Seed of the posterior noise.
    pub seed: u64,
}

/// One logged step.
#[derive(Debug, Clone, Copy)]
pub struct StepLog {
    /// Step index (1-based after the step).
    pub step: usize,
    /// Total loss.
    pub loss: f32,
    /// Reconstruction MSE.
    pub mse: f32,
    /// KL term.
    pub kl: f32,
    /// Learning rate used.
    pub lr: f64,
}

/// Trains a VAE in `dir` (checkpoint `dir/vae.ckpt.safetensors`, log `dir/vae-loss.csv`),
/// resuming from the checkpoint if there is one. `images(step)` gives a batch (B, 3, H, W)
/// in [−1, 1]; `on_step` sees every step (for a progress bar). Returns the VarMap and model.
pub fn train_vae(
    dir: &Path,
    cfg: &VaeConfig,
    run: &VaeRun,
    dev: &Device,
    images: impl Fn(usize) -> Result<Tensor>,
    mut on_step: impl FnMut(&StepLog),
) -> std::result::Result<(VarMap, Vae, Trainer), String> {
    let e = |x: candle_core::Error| x.to_string();
    let vm = VarMap::new();
    let vae = Vae::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, dev)).map_err(e)?;
    let adam = AdamWConfig {
        lr: run.lr,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut tr = Trainer::new(&vm, adam, 0.999).map_err(e)?;
    let ckpt = dir.join("vae.ckpt.safetensors");
    if ckpt.exists() {
        tr.load(&ckpt, dev)?;
    }
    let log_path = dir.join("vae-loss.csv");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|x| format!("{}: {x}", log_path.display()))?;
    if tr.step == 0 {
        writeln!(log, "step,loss,mse,kl,lr").map_err(|x| x.to_string())?;
    }
    while tr.step < run.steps {
        let s = tr.step;
        let x = images(s).map_err(e)?;
        let (b, _, h, w) = x.dims4().map_err(e)?;
        let f = VaeConfig::FACTOR;
        let eps = noise(
            (b, cfg.latent, h / f, w / f),
            run.seed.wrapping_add(s as u64),
            dev,
        )
        .map_err(e)?;
        let (total, mse, kl) = vae.loss(&x, &eps, run.beta).map_err(e)?;
        let lr = lr_at(s, run.lr, run.warmup, run.steps);
        tr.step(&total, lr, 1.0).map_err(e)?;
        let entry = StepLog {
            step: tr.step,
            loss: total.to_scalar::<f32>().map_err(e)?,
            mse: mse.to_scalar::<f32>().map_err(e)?,
            kl: kl.to_scalar::<f32>().map_err(e)?,
            lr,
        };
        writeln!(
            log,
            "{},{},{},{},{}",
            entry.step, entry.loss, entry.mse, entry.kl, entry.lr
        )
        .map_err(|x| x.to_string())?;
        on_step(&entry);
        if tr.step % run.checkpoint_every == 0 || tr.step == run.steps {
            tr.save(&ckpt, &serde_json::json!({"run": run}))
                .map_err(|x| format!("{}: {x}", ckpt.display()))?;
        }
    }
    Ok((vm, vae, tr))
}

/// PSNR in dB of reconstructions (from the posterior mean) of images in [−1, 1].
pub fn psnr(vae: &Vae, x: &Tensor) -> Result<f64> {
    let rec = vae.decode(&vae.encode(x)?)?.clamp(-1.0, 1.0)?;
    let mse = ((rec - x)? * 0.5)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64; // in [0, 1] units
    Ok(10.0 * (1.0 / mse.max(1e-12)).log10())
}

/// Flux-style latent statistics: `shift` = mean, `scale` = 1 / std of the posterior means.
pub fn latent_stats(vae: &Vae, x: &Tensor) -> Result<(f64, f64)> {
    let z = vae.encode(x)?.flatten_all()?;
    let mean = z.mean_all()?.to_scalar::<f32>()? as f64;
    let var = z
        .affine(1.0, -mean)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok((mean, 1.0 / var.sqrt().max(1e-6)))
}

/// Writes weights as f16 safetensors plus `config` as JSON beside them, atomically.
pub fn export_f16(
    weights: &HashMap<String, Tensor>,
    path: &Path,
    config: &serde_json::Value,
) -> std::result::Result<(), String> {
    let half: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, t)| t.to_dtype(DType::F16).map(|t| (k.clone(), t)))
        .collect::<Result<_>>()
        .map_err(|e| e.to_string())?;
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&half, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = serde_json::to_string_pretty(config).expect("JSON values print");
    zlayer_composite::atomic_write(&path.with_extension("json"), |f| {
        f.write_all(json.as_bytes())
    })
    .map_err(|e| e.to_string())
}

/// Loads f16/f32 safetensors weights into a VarBuilder computing in f32.
pub fn load_weights(path: &Path, dev: &Device) -> std::result::Result<VarBuilder<'static>, String> {
    let t = candle_core::safetensors::load(path, dev)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(VarBuilder::from_tensors(t, DType::F32, dev))
}
