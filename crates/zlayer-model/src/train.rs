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

/// The schedule of a training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopConfig {
    /// Total steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Global gradient-norm clip (0 disables).
    pub clip: f64,
    /// EMA decay.
    pub ema: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
}

/// One logged step.
#[derive(Debug, Clone)]
pub struct StepLog {
    /// Steps done.
    pub step: usize,
    /// Loss.
    pub loss: f32,
    /// Extra named values the loss closure reported.
    pub extra: Vec<(String, f32)>,
    /// Learning rate used.
    pub lr: f64,
}

/// One straight loop: resume from `dir/<name>.ckpt.safetensors` if present, then step, log to
/// `dir/<name>-loss.csv`, checkpoint. `loss(step)` returns the loss and extra values to log;
/// its data must depend only on the step, so that resuming is exact.
#[allow(clippy::too_many_arguments)]
pub fn train_loop(
    dir: &Path,
    name: &str,
    vm: &VarMap,
    lc: &LoopConfig,
    meta: &serde_json::Value,
    dev: &Device,
    loss: impl Fn(usize) -> Result<(Tensor, Vec<(String, f32)>)>,
    mut on_step: impl FnMut(&StepLog),
) -> std::result::Result<Trainer, String> {
    let e = |x: candle_core::Error| x.to_string();
    let adam = AdamWConfig {
        lr: lc.lr,
        weight_decay: lc.weight_decay,
        ..Default::default()
    };
    let mut tr = Trainer::new(vm, adam, lc.ema).map_err(e)?;
    let ckpt = dir.join(format!("{name}.ckpt.safetensors"));
    if ckpt.exists() {
        tr.load(&ckpt, dev)?;
    }
    let log_path = dir.join(format!("{name}-loss.csv"));
    truncate_log(&log_path, tr.step)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|x| format!("{}: {x}", log_path.display()))?;
    while tr.step < lc.steps {
        let s = tr.step;
        let (total, extra) = loss(s).map_err(e)?;
        let lr = lr_at(s, lc.lr, lc.warmup, lc.steps);
        let value = total.to_scalar::<f32>().map_err(e)?;
        tr.step(&total, lr, lc.clip).map_err(e)?;
        if s == 0 {
            let names: Vec<&str> = extra.iter().map(|(n, _)| n.as_str()).collect();
            writeln!(
                log,
                "step,loss,lr{}{}",
                if names.is_empty() { "" } else { "," },
                names.join(",")
            )
            .map_err(|x| x.to_string())?;
        }
        let vals: Vec<String> = extra.iter().map(|(_, v)| v.to_string()).collect();
        writeln!(
            log,
            "{},{},{}{}{}",
            tr.step,
            value,
            lr,
            if vals.is_empty() { "" } else { "," },
            vals.join(",")
        )
        .map_err(|x| x.to_string())?;
        on_step(&StepLog {
            step: tr.step,
            loss: value,
            extra,
            lr,
        });
        if tr.step % lc.checkpoint_every == 0 || tr.step == lc.steps {
            tr.save(&ckpt, meta)
                .map_err(|x| format!("{}: {x}", ckpt.display()))?;
        }
    }
    Ok(tr)
}

/// Parameters of a VarMap, for reports.
pub fn parameters(vm: &VarMap) -> usize {
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Drops the rows of a loss log after `step` (written after the last checkpoint by a run
/// that then stopped), so that a resumed run's log has every step exactly once.
fn truncate_log(path: &Path, step: usize) -> std::result::Result<(), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let keep: Vec<&str> = text
        .lines()
        .enumerate()
        .take_while(|(i, l)| {
            *i == 0 && step > 0
                || l.split(',')
                    .next()
                    .and_then(|f| f.parse::<usize>().ok())
                    .is_some_and(|s| s <= step)
        })
        .map(|(_, l)| l)
        .collect();
    if keep.len() == text.lines().count() {
        return Ok(());
    }
    let body: String = keep.iter().map(|l| format!("{l}\n")).collect();
    zlayer_composite::atomic_write(path, |f| f.write_all(body.as_bytes()))
        .map_err(|x| format!("{}: {x}", path.display()))
}

/// The VAE objective: KL weight, and the seed of the posterior noise (step s uses seed + s).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeObjective {
    /// KL weight.
    pub beta: f64,
    /// Noise seed.
    pub seed: u64,
    /// Fine-tune only the decoder of this trained VAE (its encoder, and so its latents, stay
    /// fixed); `None` trains a fresh VAE.
    pub decoder_of: Option<std::path::PathBuf>,
    /// With `decoder_of`: the most Gaussian noise (std, raw latent units) added to the latents
    /// the decoder reads, drawn per image uniformly from [0, this]; 0 adds none.
    #[serde(default)]
    pub latent_noise: f64,
}

/// Trains a VAE in `dir` (see [`train_loop`]); `images(step)` gives (B, 3, H, W) in [−1, 1].
pub fn train_vae(
    dir: &Path,
    cfg: &VaeConfig,
    lc: &LoopConfig,
    obj: VaeObjective,
    dev: &Device,
    images: impl Fn(usize) -> Result<Tensor>,
    on_step: impl FnMut(&StepLog),
) -> std::result::Result<(VarMap, Vae, Trainer), String> {
    let meta = serde_json::json!({"kind": "vae", "config": cfg, "loop": lc, "objective": obj});
    let VaeObjective {
        beta,
        seed,
        decoder_of,
        latent_noise,
    } = obj;
    let vm = VarMap::new();
    let vae = Vae::new(cfg, crate::init::seeded(&vm, seed, DType::F32, dev))
        .map_err(|e| e.to_string())?;
    if let Some(from) = &decoder_of {
        // A resumed checkpoint then overwrites these with its own values.
        crate::init::load_into(&vm, from)?;
    }
    let tr = train_loop(
        dir,
        "vae",
        &vm,
        lc,
        &meta,
        dev,
        |s| {
            let x = images(s)?;
            let (b, _, h, w) = x.dims4()?;
            let f = cfg.factor();
            let eps = noise(
                (b, cfg.latent, h / f, w / f),
                seed.wrapping_add(s as u64),
                dev,
            )?;
            if decoder_of.is_some() {
                let shake = (latent_noise > 0.0)
                    .then(|| latent_shake(eps.dims4()?, latent_noise, seed, s, dev))
                    .transpose()?;
                let mse = vae.decoder_loss(&x, &eps, shake.as_ref())?;
                let v = mse.to_scalar::<f32>()?;
                return Ok((mse, vec![("mse".into(), v), ("kl".into(), 0.0)]));
            }
            let (total, mse, kl) = vae.loss(&x, &eps, beta)?;
            Ok((
                total,
                vec![
                    ("mse".into(), mse.to_scalar::<f32>()?),
                    ("kl".into(), kl.to_scalar::<f32>()?),
                ],
            ))
        },
        on_step,
    )?;
    Ok((vm, vae, tr))
}

/// Step `step`'s latent perturbation: image i gets Gaussian noise of std `u_i·max`, u_i
/// uniform in [0, 1), so the decoder sees clean and shaken latents alike.
fn latent_shake(
    (b, c, h, w): (usize, usize, usize, usize),
    max: f64,
    seed: u64,
    step: usize,
    dev: &Device,
) -> Result<Tensor> {
    // Streams apart from the posterior noise's (seed + step).
    let stream = (seed ^ 0x5348_414b_4520_4e4f).wrapping_add(step as u64);
    let mut rng = zlayer_scene::rng::Rng::new(stream);
    let levels: Vec<f32> = (0..b).map(|_| rng.f32() * max as f32).collect();
    let levels = Tensor::from_vec(levels, (b, 1, 1, 1), dev)?;
    noise((b, c, h, w), stream.rotate_left(17), dev)?.broadcast_mul(&levels)
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
    // Sorted, so the same weights give the same bytes; fsynced and renamed into place.
    let mut named: Vec<(&String, &Tensor)> = half.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(named, None).map_err(|e| e.to_string())?;
    zlayer_composite::atomic_write(path, |f| f.write_all(&bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_shake_draws_a_level_per_image_up_to_the_maximum() -> Result<()> {
        let dev = Device::Cpu;
        let shape = (64, 8, 16, 16);
        let a = latent_shake(shape, 0.5, 7, 3, &dev)?;
        assert_eq!(a.dims4()?, shape);
        // A fixed function of (seed, step), so a resumed run shakes as the first did.
        let again = latent_shake(shape, 0.5, 7, 3, &dev)?;
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            again.flatten_all()?.to_vec1::<f32>()?
        );
        let next = latent_shake(shape, 0.5, 7, 4, &dev)?;
        assert_ne!(
            a.flatten_all()?.to_vec1::<f32>()?,
            next.flatten_all()?.to_vec1::<f32>()?
        );
        // Each image's std estimates its own level: in [0, 0.5), spread over that range.
        let stds: Vec<f32> = a
            .sqr()?
            .flatten_from(1)?
            .mean(1)?
            .sqrt()?
            .to_vec1::<f32>()?;
        assert!(stds.iter().all(|&s| s < 0.5 * 1.1), "{stds:?}");
        let (lo, hi) = stds
            .iter()
            .fold((1f32, 0f32), |(l, h), &s| (l.min(s), h.max(s)));
        assert!(
            lo < 0.1 && hi > 0.4,
            "levels {lo}..{hi} should span [0, 0.5)"
        );
        let mean = stds.iter().sum::<f32>() / stds.len() as f32;
        assert!((mean - 0.25).abs() < 0.06, "mean level {mean}");
        Ok(())
    }
}
