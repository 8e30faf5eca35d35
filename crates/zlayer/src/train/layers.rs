//! `zlayer train layers`: the multi-task layer model (decomposition, matting, removal,
//! completion) on SA-Z-synth's exact RGBA layers, in an alpha-aware VAE's latents.

use super::loop_config;
use crate::args::SplitArg;
use candle_core::Device;
use clap::Args;
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_app::data::{scenes, synth_words};
use zlayer_app::decompose::{LayerModel, OmniMeta, Plan, heldout, sequences};
use zlayer_app::report::Progress;
use zlayer_model::init::{adaln_zero, seeded};
use zlayer_model::omni::{Batch, Omni, OmniConfig, Sequence, Task};
use zlayer_model::sampling::Rng;
use zlayer_model::text::Tokenizer;
use zlayer_model::train::{export_f16, parameters, train_loop};
use zlayer_synth::Split;

/// Flags of `zlayer train layers`.
#[derive(Debug, Args)]
pub struct LayersArgs {
    /// The alpha-aware VAE (from `zlayer train alpha-vae`), its .json beside it; copied into
    /// the run folder with the model.
    #[arg(long)]
    vae: PathBuf,
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Total optimisation steps.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Scenes per step, each one task.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-4)]
    lr: f64,
    /// Share of samples that train decomposition; matting, removal and completion share
    /// the rest as 4 : 3 : 3.
    #[arg(long, default_value_t = 0.5)]
    decompose_share: f64,
    /// Splits to train on, interleaved.
    #[arg(long, value_delimiter = ',', default_value = "simple,regular,complex")]
    splits: Vec<SplitArg>,
    /// Data seed; held-out scenes use seed + 1,000,000.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out complex scenes decomposed and scored at the end.
    #[arg(long, default_value_t = 64)]
    heldout: usize,
    /// Sampling steps of the held-out decompositions (recorded as the model's default).
    #[arg(long, default_value_t = 20)]
    sample_steps: usize,
}

/// Sequences per forward pass within a step.
const MICRO_BATCH: usize = 4;

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Internal(e.to_string())
}

/// The task of sample `k` of the run.
fn task_of(seed: u64, k: u64, decompose_share: f64) -> Task {
    let u = Rng::new(seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)).uniform();
    if u < decompose_share {
        return Task::Decompose;
    }
    match ((u - decompose_share) / (1.0 - decompose_share).max(1e-9) * 10.0) as usize {
        0..=3 => Task::Matte,
        4..=6 => Task::Remove,
        _ => Task::Complete,
    }
}

/// Runs the command.
pub fn run(a: LayersArgs) -> Result<(), Failure> {
    if a.batch == 0 || a.steps == 0 || !(0.0..=1.0).contains(&a.decompose_share) {
        return Err(Failure::User(
            "--batch and --steps must be positive and --decompose-share within [0, 1]".into(),
        ));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::User(format!("{}: {e}", a.out.display())))?;
    let dev = Device::Cpu;
    let (vae, size) = zlayer_app::model::vae_file(&a.vae, &dev)?;
    if vae.cfg.image_channels != 4 {
        return Err(Failure::User(format!(
            "{}: an RGB VAE ({} image channels); the layer model needs an alpha-aware one from `zlayer train alpha-vae`",
            a.vae.display(),
            vae.cfg.image_channels
        )));
    }
    let words = synth_words();
    let tok = Tokenizer::new(&words);
    let cfg = OmniConfig::tiny(vae.cfg.latent, tok.len());
    let vm = candle_nn::VarMap::new();
    let model =
        Omni::new(&cfg, seeded(&vm, a.seed, candle_core::DType::F32, &dev)).map_err(internal)?;
    adaln_zero(&vm).map_err(internal)?;
    let grid = size as usize / vae.cfg.factor();
    let splits: Vec<Split> = a.splits.iter().map(|&s| s.into()).collect();
    let lc = loop_config(a.steps, a.lr);
    let meta = serde_json::json!({"kind": "omni-train", "config": cfg, "vae": a.vae, "batch": a.batch, "seed": a.seed, "decompose_share": a.decompose_share, "loop": lc});
    let params = parameters(&vm);
    eprintln!(
        "layer model: {params} parameters, {grid}×{grid} latent cells of {} channels per frame",
        cfg.latent
    );
    let bar = Progress::new(a.steps);
    let start = std::time::Instant::now();
    let trainer = train_loop(
        &a.out,
        "omni",
        &vm,
        &lc,
        &meta,
        &dev,
        |step| {
            let first = (step * a.batch) as u64;
            let sc = scenes(a.seed, first, a.batch, size, &splits);
            let plans = sc
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let k = first + i as u64;
                    Plan::training(
                        s,
                        task_of(a.seed, k, a.decompose_share),
                        a.seed ^ k,
                        &tok,
                        grid,
                    )
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(candle_core::Error::msg)?;
            let mut seqs = sequences(plans, &vae, size, &dev)?;
            let tokens: usize = seqs.iter().map(|s| s.len()).sum();
            // Sequences run from ~300 tokens (a simple scene's matte) to over 1,000 (a
            // complex decomposition); grouped by length, little compute goes to padding.
            seqs.sort_by_key(|s| s.len());
            let targets =
                |s: &[Sequence]| s.iter().map(|q| q.target_tokens()).sum::<usize>() as f64;
            let all = targets(&seqs).max(1.0);
            let mut loss = None;
            for (g, group) in seqs.chunks(MICRO_BATCH).enumerate() {
                let batch = Batch::new(group, &cfg, &dev)?;
                let seed = a
                    .seed
                    .wrapping_add(step as u64)
                    .wrapping_add((g as u64) << 40);
                let part = (model.loss(&batch, seed)? * (targets(group) / all))?;
                loss = Some(match loss {
                    None => part,
                    Some(l) => (l + part)?,
                });
            }
            let loss = loss.ok_or_else(|| candle_core::Error::msg("empty batch"))?;
            Ok((loss, vec![("tokens".into(), tokens as f32)]))
        },
        |log| super::show_step(&bar, &a.out, "omni", lc.checkpoint_every, log, &[]),
    )
    .map_err(Failure::Internal)?;
    bar.finish();
    super::plot_loss(&a.out, "omni")?;
    copy_vae(&a.vae, &a.out)?;
    let omni_meta = OmniMeta {
        config: cfg.clone(),
        words,
        image_size: size,
        steps: a.sample_steps,
    };
    let weights = a.out.join("omni.safetensors");
    export_f16(
        &trainer.ema(),
        &weights,
        &serde_json::to_value(&omni_meta).map_err(internal)?,
    )
    .map_err(Failure::Internal)?;
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let (lm, _) = LayerModel::load(&a.out, &dev)?;
    let held = (a.seed + 1_000_000, a.heldout.max(1), Split::Complex);
    let scores = heldout(&lm, held, a.sample_steps, &dev).map_err(Failure::Internal)?;
    let mut json = serde_json::to_value(&omni_meta).map_err(internal)?;
    json["steps_trained"] = trainer.step.into();
    json["train_minutes"] = minutes.into();
    json["heldout"] = serde_json::to_value(&scores).map_err(internal)?;
    export_f16(&trainer.ema(), &weights, &json).map_err(Failure::Internal)?;
    eprintln!(
        "trained {} steps in {minutes:.1} min; held-out, {} complex scenes:",
        trainer.step,
        a.heldout.max(1)
    );
    for s in &scores {
        eprintln!(
            "  {:<17} visible L1 {:.4} hidden L1 {:.4} alpha SAD {:.3} MSE {:.5} Grad {:.3} Conn {:.3}{}",
            s.method,
            s.visible_l1,
            s.hidden_l1,
            s.sad,
            s.mse,
            s.grad,
            s.conn,
            s.recomposite_psnr
                .map_or(String::new(), |p| format!(" re-composite {p:.2} dB"))
        );
    }
    eprintln!("wrote {}", weights.display());
    Ok(())
}

/// Puts the VAE (and its .json) beside the model, so the run folder loads on its own.
fn copy_vae(vae: &Path, out: &Path) -> Result<(), Failure> {
    for (from, to) in [
        (vae.to_path_buf(), out.join("vae.safetensors")),
        (vae.with_extension("json"), out.join("vae.json")),
    ] {
        if from.canonicalize().ok() == to.canonicalize().ok() {
            continue;
        }
        let bytes =
            std::fs::read(&from).map_err(|e| Failure::User(format!("{}: {e}", from.display())))?;
        zlayer_composite::atomic_write(&to, |f| std::io::Write::write_all(f, &bytes))
            .map_err(|e| Failure::Internal(format!("{}: {e}", to.display())))?;
    }
    Ok(())
}
