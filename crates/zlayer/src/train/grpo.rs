//! `zlayer train grpo`: Flow-GRPO on a trained layout branch, rewarded on decoded images.

use crate::args::SplitArg;
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::grpo::{GrpoConfig, train};
use zlayer_app::model::{Model, ModelDir};

/// Flags of `zlayer train grpo`.
#[derive(Debug, Args)]
pub struct GrpoArgs {
    /// Model folder with the vae and base the branch was trained on (both stay frozen).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// The trained branch to start from (a layout.safetensors with its layout.json);
    /// default: the model folder's occlusionformer branch.
    #[arg(long)]
    start: Option<PathBuf>,
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Iterations: each samples the trajectories, scores them, then updates.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Training scenes per iteration (each with a declared pair its render shows).
    #[arg(long, default_value_t = 4)]
    scenes: usize,
    /// Trajectories per scene (G), from one starting noise; advantages compare them.
    #[arg(long, default_value_t = 6)]
    group: usize,
    /// Optimiser steps per iteration, each over an equal share of the trajectories.
    #[arg(long, default_value_t = 2)]
    minibatches: usize,
    /// Euler steps of each trajectory.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Steps with SDE noise, the only ones trained (Flow-GRPO-Fast: one or two suffice).
    #[arg(long, default_value_t = 2)]
    sde_steps: usize,
    /// The SDE steps are drawn among the first this many steps that run the branch (the
    /// early, noisy steps decide who is in front).
    #[arg(long, default_value_t = 4)]
    sde_span: usize,
    /// The SDE's noise level a in σ_t = a·√(t / (1 − t)).
    #[arg(long, default_value_t = 0.7)]
    noise_level: f64,
    /// Guidance of the trajectories; 1 (none) is how the evaluation draws branches.
    #[arg(long, default_value_t = 1.0)]
    guidance: f64,
    /// Clip ε of the importance ratio.
    #[arg(long, default_value_t = 0.2)]
    clip: f64,
    /// Weight β of the KL penalty to the starting branch (0: no reference pass).
    #[arg(long, default_value_t = 0.04)]
    beta: f64,
    /// Peak learning rate (cosine to a tenth).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Data seed (validation scenes: seed + 2,000,000).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Splits of the training and validation scenes.
    #[arg(long, value_delimiter = ',', default_value = "complex")]
    splits: Vec<SplitArg>,
    /// Weight of the order reward: the declared front instance owns each shown pair's
    /// overlap.
    #[arg(long, default_value_t = 1.0)]
    order_weight: f64,
    /// Weight of the order-share reward: the declared front instance's share of each shown
    /// pair's overlap, a continuous reading of the same rule.
    #[arg(long, default_value_t = 0.0)]
    order_share_weight: f64,
    /// Weight of the layout reward: visible-mask IoU against the exact masks.
    #[arg(long, default_value_t = 0.5)]
    layout_weight: f64,
    /// Weight of the colour reward: the captions' colours found in the image.
    #[arg(long, default_value_t = 0.0)]
    colour_weight: f64,
    /// Iterations between held-out reports (and checkpoints); 0: no reports.
    #[arg(long, default_value_t = 25)]
    eval_every: usize,
    /// Validation scenes per split for the reports.
    #[arg(long, default_value_t = 48)]
    eval_scenes: usize,
    /// Euler steps of the held-out images.
    #[arg(long, default_value_t = 20)]
    eval_steps: usize,
}

/// Runs the command.
pub fn run(a: GrpoArgs) -> Result<(), Failure> {
    let start = match &a.start {
        Some(p) => p.clone(),
        None => a.model.layout_path("occlusionformer").ok_or_else(|| {
            Failure::User(
                "the bundled model's branch is built in: pass --start models/tiny16/layout.safetensors or --model DIR"
                    .into(),
            )
        })?,
    };
    if !start.is_file() {
        return Err(Failure::User(format!(
            "{}: no trained branch there; train one with `zlayer train layout` or pass --start FILE",
            start.display()
        )));
    }
    let dev = Device::Cpu;
    let m = Model::load(&a.model, &dev)?;
    let splits: Vec<String> = a
        .splits
        .iter()
        .map(|&s| zlayer_synth::Split::from(s).name().to_string())
        .collect();
    let c = GrpoConfig {
        iterations: a.iterations,
        scenes: a.scenes,
        group: a.group,
        minibatches: a.minibatches,
        steps: a.steps,
        sde_steps: a.sde_steps,
        sde_span: a.sde_span,
        noise_level: a.noise_level,
        guidance: a.guidance,
        clip: a.clip,
        beta: a.beta,
        lr: a.lr,
        seed: a.seed,
        splits,
        rewards: vec![
            ("order".into(), a.order_weight),
            ("order-share".into(), a.order_share_weight),
            ("layout".into(), a.layout_weight),
            ("colour".into(), a.colour_weight),
        ],
        eval_every: a.eval_every,
        eval_scenes: a.eval_scenes,
        eval_steps: a.eval_steps,
    };
    let start_time = std::time::Instant::now();
    let cost = train(&m, &start, &a.out, &c, &dev)?;
    let minutes = start_time.elapsed().as_secs_f64() / 60.0;
    let per = |s: f64| s / cost.iterations.max(1) as f64;
    eprintln!(
        "{} iterations in {minutes:.1} min ({:.1} CPU-min on {} threads): per iteration rollout {:.2} s, reward {:.2} s, update {:.2} s; held-out reports {:.1} min",
        cost.iterations,
        minutes * rayon::current_num_threads() as f64,
        rayon::current_num_threads(),
        per(cost.rollout_s),
        per(cost.reward_s),
        per(cost.update_s),
        cost.eval_s / 60.0
    );
    eprintln!(
        "wrote {}; held-out scores in {}",
        a.out.join("layout.safetensors").display(),
        a.out.join("heldout.csv").display()
    );
    Ok(())
}
