//! `zlayer train`: training runs on SA-Z-synth, with progress, logs and exact resume.

use zlayer_app::data::{base_batch, scenes, synth_words, to_tensor};
use zlayer_app::report::{Progress, plot_loss};
pub mod alpha;
pub mod grpo;
pub mod layers;
pub mod layout;
pub mod pelc;

use crate::args::SplitArg;
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_model::train::{
    LoopConfig, StepLog, VaeObjective, export_f16, latent_stats, load_weights, psnr, train_vae,
};
use zlayer_model::vae::{Vae, VaeConfig};
use zlayer_synth::{Split, SynthScene};

/// What to train.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// The image autoencoder (4× and 8 latent channels by default; --preset tiny8 for 8× and 16).
    ///
    /// Writes DIR/vae.ckpt.safetensors (resumable), DIR/vae-loss.csv, and at the end the EMA
    /// weights as DIR/vae.safetensors (f16) with DIR/vae.json (config, latent shift/scale,
    /// held-out PSNR).
    Vae(VaeArgs),
    /// The base text-to-image model: MM-DiT + text encoder on VAE latents, global prompts.
    ///
    /// Writes DIR/base.ckpt.safetensors (resumable), DIR/base-loss.csv, and at the end the EMA
    /// weights as DIR/base.safetensors (f16) with DIR/base.json (configs, vocabulary).
    Base(BaseArgs),
    /// Stage 2: the layout branch (LoRA, layout tokens, Z-order heads) on the frozen base,
    /// with L = L_flow + 0.5·L_align on SA-Z-synth's amodal masks.
    ///
    /// Writes DIR/layout.ckpt.safetensors (resumable), DIR/layout-loss.csv/.png, and at the
    /// end the EMA weights as DIR/layout.safetensors (f16) with DIR/layout.json.
    Layout(layout::LayoutArgs),
    /// Reinforcement learning on decoded images (Flow-GRPO): the layout branch's LoRA and
    /// layout modules are trained to make the declared order win, rewarded by the segmenter
    /// against SA-Z-synth's exact ground truth; the base stays frozen.
    ///
    /// Writes DIR/grpo.ckpt.safetensors (resumable), DIR/grpo-loss.csv (loss, reward and
    /// its parts, KL, clipped share per step), DIR/heldout.csv/.png (the metric suite on
    /// validation scenes every --eval-every iterations) and at the end DIR/layout.safetensors
    /// with DIR/layout.json, a branch every command can load.
    Grpo(grpo::GrpoArgs),
    /// Latent compositing (PELC): DecFormer learns the per-channel blend and residual that
    /// make a blend of two latents decode like the pixel composite, on SA-Z-synth pairs and
    /// hard, soft, stroke and instance masks; the VAE stays frozen.
    ///
    /// Writes DIR/pelc.ckpt.safetensors (resumable), DIR/pelc-loss.csv/.png, and at the end
    /// the EMA weights as DIR/pelc.safetensors (f16) with DIR/pelc.json.
    Pelc(pelc::PelcArgs),
    /// The alpha-aware RGBA VAE, started from a trained RGB VAE so that opaque images
    /// round-trip exactly as before, trained on SA-Z-synth's opaque images and exact amodal
    /// RGBA layers with the expected composite error over random backgrounds.
    ///
    /// Writes DIR/vae.ckpt.safetensors (resumable), DIR/vae-loss.csv/.png, and at the end the
    /// EMA weights as DIR/vae.safetensors (f16) with DIR/vae.json (config, the RGB VAE's latent
    /// statistics, held-out RGB PSNR and alpha SAD/MSE/Grad).
    #[command(after_help = "Example:
  zlayer train alpha-vae --from models/tiny16/vae.safetensors --out runs/alpha-vae --steps 1500")]
    AlphaVae(alpha::AlphaVaeArgs),
    /// The multi-task layer model (OmniAlpha's sequence-to-sequence DiT): RGBA latents as
    /// frames on the RoPE layer axis, a task token, and each instance's caption, box and
    /// depth level. Tasks: decomposition (image + scene → background plate and an amodal
    /// RGBA layer per instance), matting, object removal and layer-conditioned completion,
    /// all from SA-Z-synth's exact layers.
    ///
    /// Writes DIR/omni.ckpt.safetensors (resumable), DIR/omni-loss.csv/.png, and at the end
    /// DIR/omni.safetensors with DIR/omni.json and a copy of the VAE: a folder that
    /// `zlayer decompose --layer-model DIR` reads. It then scores held-out decompositions.
    #[command(after_help = "Example:
  zlayer train alpha-vae --out runs/alpha --steps 1500
  zlayer train layers --vae runs/alpha/vae.safetensors --out runs/layers --steps 3000")]
    Layers(layers::LayersArgs),
}

/// Flags of `zlayer train base`.
#[derive(Debug, Args)]
pub struct BaseArgs {
    /// The trained VAE (its .json must sit beside it).
    #[arg(long)]
    vae: PathBuf,
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Total optimisation steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Scenes per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Data seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probability of training a sample with the empty prompt (for guidance).
    #[arg(long, default_value_t = 0.1)]
    drop: f32,
    /// Splits to train on, interleaved. The prompt-only stage stays lean: crowded `complex`
    /// scenes are the layout branch's job.
    #[arg(long, value_delimiter = ',', default_value = "simple,regular")]
    splits: Vec<SplitArg>,
    /// Start every block as the identity and the output at zero (DiT's adaLN-Zero: zeroed
    /// modulations and final layer) instead of random modulations.
    #[arg(long)]
    adaln_zero: bool,
    /// Weight of the flow loss on latent tokens that objects cover, against 1 on the
    /// background (a token counts in proportion to its covered pixels). Colour binding lives
    /// in the objects, which cover a fifth of a simple scene.
    #[arg(long, default_value_t = 1.0)]
    object_weight: f32,
    /// Shift of the training times towards the noise, as Flux's resolution shift
    /// `s·t / (1 + (s − 1)·t)`: 3 puts the median at t = 0.75, where the image is mostly noise
    /// and only the prompt can tell the colours. 1 draws plain logit-normal times.
    #[arg(long, default_value_t = 1.0)]
    time_shift: f64,
    /// Train only on scenes in which every object shows at least this many pixels (0 keeps
    /// every scene): a prompt-only model should learn that what a prompt names is seen. A
    /// crowded `regular` scene hides some named object in about a quarter of its images.
    #[arg(long, default_value_t = 0.0)]
    min_visible: f32,
}

/// Per latent token (B, h·w): 1 + (weight − 1) × the share of its pixels that any instance's
/// amodal mask covers.
fn object_weights(
    scenes: &[SynthScene],
    size: u32,
    factor: usize,
    weight: f32,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let (s, f) = (size as usize, factor);
    let g = s / f;
    let w: Vec<f32> = scenes
        .iter()
        .flat_map(|sc| {
            (0..g * g).map(move |t| {
                let (ty, tx) = (t / g, t % g);
                let mut cov = 0f32;
                for y in ty * f..(ty + 1) * f {
                    for x in tx * f..(tx + 1) * f {
                        let p = y * s + x;
                        let m = sc.amodal.iter().map(|a| a[p]).max().unwrap_or(0);
                        cov += m as f32 / 255.0;
                    }
                }
                1.0 + (weight - 1.0) * cov / (f * f) as f32
            })
        })
        .collect();
    Tensor::from_vec(w, (scenes.len(), g * g), dev)
}

/// The VAE shapes `zlayer train vae` can build.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VaePreset {
    /// 4×, stages of 16/32/64 channels, 8 latent channels, one block per stage.
    Tiny,
    /// 8×, stages of 32/64/128/128 channels, 16 latent channels, two blocks per stage.
    Tiny8,
}

/// Flags of `zlayer train vae`.
#[derive(Debug, Args)]
pub struct VaeArgs {
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Total optimisation steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Image side in pixels (a multiple of the preset's factor: 4 for tiny, 8 for tiny8).
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Architecture: `tiny` (4×, 8 latent channels, the bundled VAE's) or `tiny8` (8×, 16
    /// latent channels: FLUX's VAE geometry; use with --size 128 for 16×16 latents).
    #[arg(long, value_enum, default_value_t = VaePreset::Tiny)]
    preset: VaePreset,
    /// Override the preset's stage channels, full resolution first (e.g. 16,32,64,128: each
    /// stage after the first halves the side).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    /// Override the preset's latent channels.
    #[arg(long)]
    latent: Option<usize>,
    /// Override the preset's residual blocks per stage.
    #[arg(long)]
    blocks: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Data seed; held-out scenes use seed + 1,000,000.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// KL weight.
    #[arg(long, default_value_t = 1e-4)]
    beta: f64,
    /// Export the last weights instead of their EMA.
    #[arg(long)]
    export_raw: bool,
    /// Held-out scenes for the final PSNR.
    #[arg(long, default_value_t = 96)]
    heldout: usize,
    /// Fine-tune only the decoder of this trained VAE (e.g. models/tiny16/vae.safetensors): its
    /// encoder, latent shift and scale stay as they are, so base models trained on its latents
    /// keep working with the new decoder.
    #[arg(long)]
    decoder_of: Option<PathBuf>,
    /// With --decoder-of: the most noise added to the latents the decoder reads, as a std in
    /// the base model's normalised latent units (each image draws its own level from 0 to
    /// this). A generator's latents are slightly off; a decoder trained on shaken latents reads
    /// them as the clean image they are near, instead of as speckle.
    #[arg(long, default_value_t = 0.0)]
    latent_noise: f64,
}

/// Runs the command.
pub fn run(cmd: TrainCommand) -> Result<(), Failure> {
    match cmd {
        TrainCommand::Vae(a) => vae(a),
        TrainCommand::Base(a) => base(a),
        TrainCommand::Layout(a) => layout::run(a),
        TrainCommand::Grpo(a) => grpo::run(a),
        TrainCommand::Pelc(a) => pelc::run(a),
        TrainCommand::AlphaVae(a) => alpha::run(a),
        TrainCommand::Layers(a) => layers::run(a),
    }
}

/// The latent (shift, scale) of the VAE whose decoder is to be fine-tuned, after checking that
/// it is a VAE of shape `cfg`.
fn original_vae(path: &Path, cfg: &VaeConfig) -> Result<(f64, f64), Failure> {
    let src = zlayer_model::bundle::Source::File(path.to_path_buf());
    let b = zlayer_model::bundle::load_vae(&src, &Device::Cpu).map_err(|e| {
        Failure::User(format!(
            "--decoder-of {}: no readable VAE there ({e}); give one from `zlayer train vae`",
            path.display()
        ))
    })?;
    if b.cfg != *cfg {
        return Err(Failure::User(format!(
            "--decoder-of {}: its config {:?} is not the --preset's {cfg:?}",
            path.display(),
            b.cfg
        )));
    }
    Ok((b.shift, b.scale))
}

/// Synthetic images (B, 3, S, S) in [−1, 1], scenes `first..first + n` of `seed`.
fn images(seed: u64, first: u64, n: usize, size: u32, dev: &Device) -> candle_core::Result<Tensor> {
    to_tensor(&scenes(seed, first, n, size, &Split::ALL), size, dev)
}

/// The schedule both runs use: 5% warmup, checkpoints every 100 steps, clip 1, EMA 0.999.
pub fn loop_config(steps: usize, lr: f64) -> LoopConfig {
    LoopConfig {
        steps,
        lr,
        warmup: (steps / 20).max(1),
        checkpoint_every: 100,
        clip: 1.0,
        ema: 0.999,
        weight_decay: 0.0,
    }
}

/// Shows a logged step on the bar with the named extras, and redraws the loss curve at
/// each checkpoint.
fn show_step(bar: &Progress, out: &Path, name: &str, every: usize, log: &StepLog, keys: &[&str]) {
    let mut msg = format!("loss {:.4}", log.loss);
    for k in keys {
        let v = log.extra.iter().find(|e| e.0 == *k).map_or(0.0, |e| e.1);
        msg += &format!(" {k} {v:.4}");
    }
    bar.update(log.step, msg);
    if log.step.is_multiple_of(every) {
        let _ = plot_loss(out, name);
    }
}

/// The end of a run: the loss curve, then the EMA weights as `OUT/NAME.safetensors` (f16)
/// with `meta` plus the steps and minutes; returns the weights' path.
fn export_run(
    out: &Path,
    name: &str,
    trainer: &zlayer_model::optim::Trainer,
    mut meta: serde_json::Value,
    start: std::time::Instant,
) -> Result<PathBuf, Failure> {
    plot_loss(out, name)?;
    let path = out.join(format!("{name}.safetensors"));
    meta["steps"] = trainer.step.into();
    meta["train_minutes"] = (start.elapsed().as_secs_f64() / 60.0).into();
    export_f16(&trainer.ema(), &path, &meta).map_err(Failure::Internal)?;
    eprintln!(
        "trained {} steps in {:.1} min; wrote {}",
        trainer.step,
        start.elapsed().as_secs_f64() / 60.0,
        path.display()
    );
    Ok(path)
}

fn vae(a: VaeArgs) -> Result<(), Failure> {
    let mut cfg = match a.preset {
        VaePreset::Tiny => VaeConfig::tiny(),
        VaePreset::Tiny8 => VaeConfig::tiny8(),
    };
    cfg.channels = a.channels.clone().unwrap_or(cfg.channels);
    cfg.latent = a.latent.unwrap_or(cfg.latent);
    cfg.blocks = a.blocks.unwrap_or(cfg.blocks);
    cfg.check()
        .map_err(|e| Failure::User(format!("--preset/--channels/--latent/--blocks: {e}")))?;
    let f = cfg.factor() as u32;
    if !a.size.is_multiple_of(f) || a.batch == 0 || a.steps == 0 {
        return Err(Failure::User(format!(
            "--size {} must be a multiple of {f} (the {:?} preset's downsampling), and --batch and --steps positive",
            a.size, a.preset
        )));
    }
    if !(a.latent_noise.is_finite() && a.latent_noise >= 0.0)
        || (a.latent_noise > 0.0 && a.decoder_of.is_none())
    {
        return Err(Failure::User(format!(
            "--latent-noise {} must be 0 or more, and needs --decoder-of (the noise is measured in that VAE's normalised latent units)",
            a.latent_noise
        )));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::User(format!("{}: {e}", a.out.display())))?;
    let dev = Device::Cpu;
    let from = a
        .decoder_of
        .as_ref()
        .map(|p| original_vae(p, &cfg))
        .transpose()?;
    let lc = loop_config(a.steps, a.lr);
    let bar = Progress::new(a.steps);
    let start = std::time::Instant::now();
    let (seed, batch, size) = (a.seed, a.batch, a.size);
    let (_, _, trainer) = train_vae(
        &a.out,
        &cfg,
        &lc,
        VaeObjective {
            beta: a.beta,
            seed: a.seed,
            decoder_of: a.decoder_of.clone(),
            // Normalised latents are (z − shift)·scale.
            latent_noise: a.latent_noise / from.map_or(1.0, |(_, scale)| scale),
        },
        &dev,
        |step| images(seed, (step * batch) as u64, batch, size, &dev),
        |log| {
            bar.update(
                log.step,
                format!(
                    "loss {:.5} mse {:.5}",
                    log.loss,
                    log.extra.first().map_or(0.0, |e| e.1)
                ),
            );
            if log.step.is_multiple_of(lc.checkpoint_every) {
                let _ = plot_loss(&a.out, "vae");
            }
        },
    )
    .map_err(Failure::Internal)?;
    bar.finish();
    plot_loss(&a.out, "vae")?;
    // Evaluate and export the EMA (or last) weights.
    let ema = if a.export_raw {
        trainer.weights()
    } else {
        trainer.ema()
    };
    let weights = a.out.join("vae.safetensors");
    let placeholder = serde_json::json!({});
    export_f16(&ema, &weights, &placeholder).map_err(Failure::Internal)?;
    let vb = load_weights(&weights, &dev).map_err(Failure::Internal)?;
    let model = Vae::new(&cfg, vb).map_err(|e| Failure::Internal(e.to_string()))?;
    let held = images(seed + 1_000_000, 0, a.heldout.max(1), size, &dev)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let p = psnr(&model, &held).map_err(|e| Failure::Internal(e.to_string()))?;
    let (shift, scale) = match from {
        // The encoder is the original's, so are its latents' statistics, exactly.
        Some(stats) => stats,
        None => latent_stats(&model, &held).map_err(|e| Failure::Internal(e.to_string()))?,
    };
    let meta = serde_json::json!({
        "kind": "vae",
        "config": {"image_channels": cfg.image_channels, "channels": cfg.channels, "latent": cfg.latent, "groups": cfg.groups, "blocks": cfg.blocks, "factor": cfg.factor()},
        "latent_shift": shift,
        "latent_scale": scale,
        "heldout_psnr_db": p,
        "image_size": size,
        "steps": trainer.step,
        "loop": lc,
        "decoder_of": a.decoder_of,
        "latent_noise": a.latent_noise,
    });
    export_f16(&ema, &weights, &meta).map_err(Failure::Internal)?;
    eprintln!(
        "trained {} steps in {:.1} min; held-out PSNR {p:.2} dB on {} scenes; latents shift {shift:.4} scale {scale:.4}; wrote {}",
        trainer.step,
        start.elapsed().as_secs_f64() / 60.0,
        a.heldout.max(1),
        weights.display()
    );
    Ok(())
}

fn base(a: BaseArgs) -> Result<(), Failure> {
    use zlayer_model::base::BaseModel;
    use zlayer_model::text::{TextConfig, Tokenizer};
    use zlayer_model::train::train_loop;
    let int = |e: String| Failure::Internal(e);
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::User(format!("{}: {e}", a.out.display())))?;
    let dev = Device::Cpu;
    let (vae, size) = zlayer_app::model::vae_file(&a.vae, &dev)?;
    let factor = vae.cfg.factor();
    let grid = (size as usize / factor, size as usize / factor);
    let tok = Tokenizer::new(synth_words());
    let text = TextConfig::tiny(tok.len());
    let dit = zlayer_model::Config {
        in_channels: vae.cfg.latent,
        ..zlayer_model::Config::tiny()
    };
    let vm = candle_nn::VarMap::new();
    let model = BaseModel::new(
        &dit,
        &text,
        tok.clone(),
        zlayer_model::init::seeded(&vm, a.seed, candle_core::DType::F32, &dev),
    )
    .map_err(|e| int(e.to_string()))?;
    if a.adaln_zero {
        // A resumed run overwrites these with its checkpoint's values.
        zlayer_model::init::adaln_zero(&vm).map_err(|e| int(e.to_string()))?;
    }
    let lc = loop_config(a.steps, a.lr);
    let split_names: Vec<&str> = a.splits.iter().map(|&s| Split::from(s).name()).collect();
    let meta = serde_json::json!({"kind": "base", "splits": split_names, "dit": dit, "text": text, "vocabulary": tok.words(), "loop": lc, "seed": a.seed, "image_size": size, "adaln_zero": a.adaln_zero, "object_weight": a.object_weight, "time_shift": a.time_shift, "min_visible": a.min_visible});
    let bar = Progress::new(a.steps);
    let start = std::time::Instant::now();
    let (seed, batch) = (a.seed, a.batch);
    let splits: Vec<Split> = a.splits.iter().map(|&s| s.into()).collect();
    if splits.is_empty() {
        return Err(Failure::User("--splits needs at least one split".into()));
    }
    if !(a.time_shift.is_finite() && a.time_shift > 0.0) {
        return Err(Failure::User(format!(
            "--time-shift {} must be a positive number (1 leaves the times as drawn)",
            a.time_shift
        )));
    }
    if !(a.min_visible.is_finite() && a.min_visible >= 0.0) {
        return Err(Failure::User(format!(
            "--min-visible {} must be a pixel count of 0 or more (0 keeps every scene)",
            a.min_visible
        )));
    }
    if !(a.object_weight.is_finite() && a.object_weight > 0.0) {
        return Err(Failure::User(format!(
            "--object-weight {} must be a positive number (1 weighs objects as the background)",
            a.object_weight
        )));
    }
    let trainer = train_loop(
        &a.out,
        "base",
        &vm,
        &lc,
        &meta,
        &dev,
        |step| {
            let scenes = base_batch(seed, step, batch, size, &splits, a.min_visible);
            let x = to_tensor(&scenes, size, &dev)?;
            let x0 = vae.encode_tokens(&x)?;
            let mut rng =
                zlayer_scene::rng::Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9));
            let prompts: Vec<&str> = scenes
                .iter()
                .map(|s| {
                    if rng.f32() < a.drop {
                        ""
                    } else {
                        s.scene.prompt.as_str()
                    }
                })
                .collect();
            let ids = tok
                .batch(&prompts, text.max_len, &dev)
                .map_err(candle_core::Error::wrap)?;
            let w = (a.object_weight != 1.0)
                .then(|| object_weights(&scenes, size, factor, a.object_weight, &dev))
                .transpose()?;
            let opts = zlayer_model::base::LossOptions {
                weights: w.as_ref(),
                time_mu: a.time_shift.ln(),
            };
            let loss = model.loss_with(&x0, &ids, grid, rng.next_u64(), &opts)?;
            Ok((loss, Vec::new()))
        },
        |log| {
            bar.update(log.step, format!("loss {:.4}", log.loss));
            if log.step.is_multiple_of(lc.checkpoint_every) {
                let _ = plot_loss(&a.out, "base");
            }
        },
    )
    .map_err(int)?;
    bar.finish();
    plot_loss(&a.out, "base")?;
    let weights = a.out.join("base.safetensors");
    // The run's settings, and what only its end knows.
    let mut done = meta;
    for (k, v) in [
        ("steps", serde_json::json!(trainer.step)),
        (
            "train_minutes",
            serde_json::json!(start.elapsed().as_secs_f64() / 60.0),
        ),
        ("vae", serde_json::json!(a.vae)),
        ("batch", serde_json::json!(a.batch)),
    ] {
        done[k] = v;
    }
    export_f16(&trainer.ema(), &weights, &done).map_err(int)?;
    eprintln!(
        "trained {} steps in {:.1} min; wrote {}",
        trainer.step,
        start.elapsed().as_secs_f64() / 60.0,
        weights.display()
    );
    Ok(())
}
