//! `zlayer train grpo`: Flow-GRPO on a trained layout branch (DESIGN.md §4.6), with rewards
//! computed on decoded images against SA-Z-synth's exact ground truth.
//!
//! One iteration draws `scenes` training scenes that have a declared pair their render shows,
//! samples `group` trajectories of each from one starting noise with the SDE on a few steps
//! ([`zlayer_model::rollout`]), decodes and scores them ([`zlayer_metrics::reward`]), and
//! takes `minibatches` optimiser steps over the group-normalised advantages. The branch's
//! LoRA and layout modules train; the base stays frozen. The optimiser step count is
//! `iterations × minibatches`, and checkpoints fall on whole iterations only, so a resumed
//! run draws every rollout from the weights the first run had: resume is exact.
//!
//! Every `eval_every` iterations the current branch draws the validation scenes (data seed +
//! 2,000,000), and the full metric suite, the held-out flow loss and colour presence go to
//! `OUT/heldout.csv`: a reward that rises while held-out mIoU or boundary F falls is hacked.

mod heldout;

use crate::data::{scenes, synth_layout};
use crate::model::Model;
use crate::output::to_rgb8;
use crate::{Failure, user};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use heldout::Heldout;
use std::cell::RefCell;
use std::path::Path;
use std::time::Instant;
use zlayer_metrics::reward::{Truth, Weighted};
use zlayer_model::bundle::{Source, layout_with, load_layout};
use zlayer_model::grpo::{group_advantages, pick_steps};
use zlayer_model::layout_model::{LayoutModel, SceneLayout};
use zlayer_model::rollout::{Rollout, RolloutOptions, policy_loss, rollout};
use zlayer_model::train::{LoopConfig, StepLog, export_f16, train_loop};
use zlayer_synth::{Split, SynthScene};

/// A GRPO run's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GrpoConfig {
    /// Iterations (rollout, then updates).
    pub iterations: usize,
    /// Training scenes per iteration.
    pub scenes: usize,
    /// Trajectories per scene.
    pub group: usize,
    /// Optimiser steps per iteration, each over an equal share of the trajectories.
    pub minibatches: usize,
    /// Euler steps of a rollout.
    pub steps: usize,
    /// SDE (trained) steps per rollout.
    pub sde_steps: usize,
    /// The SDE steps are drawn among the first this many grounded steps.
    pub sde_span: usize,
    /// The SDE's noise level a.
    pub noise_level: f64,
    /// Guidance of the rollouts (the evaluation protocol samples branches unguided: 1).
    pub guidance: f64,
    /// Ratio clip ε.
    pub clip: f64,
    /// KL weight β.
    pub beta: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Data seed.
    pub seed: u64,
    /// Training and validation splits.
    pub splits: Vec<String>,
    /// Reward weights by name.
    pub rewards: Vec<(String, f64)>,
    /// Iterations between held-out reports (0: none).
    pub eval_every: usize,
    /// Validation scenes per split.
    pub eval_scenes: usize,
    /// Euler steps of the held-out images.
    pub eval_steps: usize,
}

/// One iteration's rollout and what the updates need from it.
struct Iteration {
    index: usize,
    layouts: Vec<SceneLayout>,
    ids: Tensor,
    roll: Rollout,
    /// The options it was sampled with (the loss reads the same).
    opts: RolloutOptions,
    adv: Vec<f64>,
    /// Mean total reward and mean of each part.
    reward: (f64, Vec<f64>),
    rollout_s: f64,
    reward_s: f64,
}

/// Seconds spent, for the cost report.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Cost {
    /// Sampling the trajectories.
    pub rollout_s: f64,
    /// Decoding and scoring them.
    pub reward_s: f64,
    /// The optimiser steps (forward, backward, AdamW).
    pub update_s: f64,
    /// Held-out reports.
    pub eval_s: f64,
    /// Iterations these cover (this process's only, after a resume).
    pub iterations: usize,
}

/// The frozen base with the branch in `start` twice: a trainable copy (its parameters in the
/// returned VarMap) and a frozen one, the KL's reference; and the start's JSON.
fn branches(
    m: &Model,
    start: &Path,
    dev: &Device,
) -> Result<(LayoutModel, VarMap, LayoutModel, serde_json::Value), Failure> {
    let src = Source::File(start.to_path_buf());
    let vm = VarMap::new();
    let seeded = zlayer_model::init::seeded(&vm, 0, DType::F32, dev);
    let policy = layout_with(&src, m.base.clone(), seeded).map_err(user)?;
    if policy.variant.regional() {
        return Err(user(format!(
            "{}: a `{}` branch has no instance layers to reward; GRPO trains occlusionformer and its ablations",
            start.display(),
            policy.variant.name()
        )));
    }
    zlayer_model::init::load_into(&vm, start).map_err(user)?;
    let reference = load_layout(&src, m.base.clone(), dev).map_err(user)?;
    Ok((policy, vm, reference, src.json().map_err(user)?))
}

/// Training scenes of iteration `it`: the first `n` of its candidates with a shown pair.
fn train_scenes(
    c: &GrpoConfig,
    splits: &[Split],
    it: usize,
    size: u32,
) -> Vec<(SynthScene, Truth)> {
    let per = 4 * c.scenes;
    let mut out = Vec::new();
    let mut round = 0u64;
    while out.len() < c.scenes {
        let first = (it * per) as u64 + round * (per as u64) * (c.iterations as u64 + 1);
        for s in scenes(c.seed, first, per, size, splits) {
            if out.len() == c.scenes {
                break;
            }
            if let Ok(t) = Truth::from_synth(&s)
                && !t.shown.is_empty()
            {
                out.push((s, t));
            }
        }
        round += 1;
    }
    out
}

fn repeat<T: Clone>(v: &[T], group: usize) -> Vec<T> {
    v.iter()
        .flat_map(|x| std::iter::repeat_n(x.clone(), group))
        .collect()
}

/// Trains `start`'s branch in `out`; returns the cost of this process's iterations.
pub fn train(
    m: &Model,
    start: &Path,
    out: &Path,
    c: &GrpoConfig,
    dev: &Device,
) -> Result<Cost, Failure> {
    let n = c.scenes * c.group;
    if c.iterations == 0 || c.scenes == 0 || c.group < 2 || c.minibatches == 0 || c.sde_steps == 0 {
        return Err(user(
            "--iterations, --scenes, --minibatches and --sde-steps must be positive, and --group at least 2 (advantages compare a group's samples)",
        ));
    }
    if !n.is_multiple_of(c.minibatches) {
        return Err(user(format!(
            "--minibatches {} must divide the {n} trajectories of an iteration (--scenes × --group)",
            c.minibatches
        )));
    }
    let splits: Vec<Split> = c
        .splits
        .iter()
        .map(|s| {
            Split::from_name(s).ok_or_else(|| {
                user(format!(
                    "unknown split {s:?}: use simple, regular or complex"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let weights: Vec<(&str, f64)> = c.rewards.iter().map(|(k, w)| (k.as_str(), *w)).collect();
    let reward = Weighted::from_weights(&weights).map_err(user)?;
    std::fs::create_dir_all(out).map_err(|e| user(format!("{}: {e}", out.display())))?;
    let (policy, vm, reference, start_meta) = branches(m, start, dev)?;
    let g = m.size / m.vae.cfg.factor();
    let grid = (g, g);
    let grounded = ((policy.grounding_ratio * c.steps as f64).ceil() as usize).clamp(1, c.steps);
    let span = c.sde_span.clamp(1, grounded);
    let every = c.eval_every.max(1);
    let lc = LoopConfig {
        steps: c.iterations * c.minibatches,
        lr: c.lr,
        warmup: 0,
        checkpoint_every: every * c.minibatches,
        clip: 1.0,
        ema: 0.0,
        weight_decay: 0.0,
    };
    let meta = serde_json::json!({"kind": "grpo", "start": start, "config": c, "loop": lc});
    let cache: RefCell<Option<Iteration>> = RefCell::new(None);
    let cost = RefCell::new(Cost::default());
    let update_start = RefCell::new(Instant::now());
    let bar = crate::report::Progress::new(lc.steps);
    let held = Heldout::new(m, c, &splits, out)?;
    let opts = |it: usize, sde: Vec<usize>| RolloutOptions {
        steps: c.steps,
        guidance: c.guidance,
        noise_level: c.noise_level,
        sde,
        group: c.group,
        seed: c.seed ^ (it as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    };
    let names = reward.names();
    if c.eval_every > 0 && !held.has(0) {
        // The starting branch's scores, before any update (still the start's weights: a
        // checkpoint, if any, is loaded inside the loop).
        held.report(&policy, &vm, &start_meta, 0, dev)?;
    }
    let trainer = train_loop(
        out,
        "grpo",
        &vm,
        &lc,
        &meta,
        dev,
        |s| {
            let (it, mb) = (s / c.minibatches, s % c.minibatches);
            let fresh = cache.borrow().as_ref().is_none_or(|i| i.index != it);
            if fresh {
                *cache.borrow_mut() = Some(iterate(
                    m, &policy, &reference, c, &splits, &reward, it, span, grid, dev, &opts,
                )?);
            }
            let guard = cache.borrow();
            let i = guard.as_ref().expect("filled above");
            let len = n / c.minibatches;
            let first = mb * len;
            let p = policy.prepare(&i.layouts[first..first + len], grid, dev)?;
            let ids = i.ids.narrow(0, first, len)?;
            let adv: Vec<f32> = i.adv[first..first + len]
                .iter()
                .map(|&a| a as f32)
                .collect();
            let adv = Tensor::from_vec(adv, len, dev)?;
            let (loss, st) = policy_loss(
                &policy,
                &ids,
                &p,
                &i.roll,
                (first, len),
                &adv,
                (c.clip, c.beta),
                &i.opts,
            )?;
            if mb == 0 {
                let mut k = cost.borrow_mut();
                k.rollout_s += i.rollout_s;
                k.reward_s += i.reward_s;
                *update_start.borrow_mut() = Instant::now();
            }
            let mut extra = vec![("reward".to_string(), i.reward.0 as f32)];
            for (name, v) in names.iter().zip(&i.reward.1) {
                extra.push(((*name).to_string(), *v as f32));
            }
            extra.push(("kl".into(), st.kl));
            extra.push(("clipped".into(), st.clipped as f32));
            Ok((loss, extra))
        },
        |log: &StepLog| {
            let it = (log.step - 1) / c.minibatches;
            if log.step.is_multiple_of(c.minibatches) {
                let mut k = cost.borrow_mut();
                k.update_s += update_start.borrow().elapsed().as_secs_f64();
                k.iterations += 1;
            }
            let get = |k: &str| log.extra.iter().find(|e| e.0 == k).map_or(0.0, |e| e.1);
            bar.update(
                log.step,
                format!(
                    "iteration {} reward {:.3} kl {:.2e}",
                    it + 1,
                    get("reward"),
                    get("kl")
                ),
            );
            // Where a checkpoint falls: the held-out report of the weights it saves.
            if (log.step.is_multiple_of(lc.checkpoint_every) || log.step == lc.steps)
                && c.eval_every > 0
            {
                let t = Instant::now();
                if let Err(e) = held.report(&policy, &vm, &start_meta, it + 1, dev) {
                    eprintln!("warning: held-out report at iteration {}: {e}", it + 1);
                }
                cost.borrow_mut().eval_s += t.elapsed().as_secs_f64();
            }
        },
    )
    .map_err(Failure::Internal)?;
    bar.finish();
    crate::report::plot_loss(out, "grpo")?;
    crate::report::plot_column(
        out,
        "grpo",
        "reward",
        "GRPO reward on the training rollouts",
    )?;
    let mut meta = start_meta;
    meta["grpo"] = serde_json::json!({"config": c, "steps": trainer.step, "start": start});
    export_f16(&trainer.weights(), &out.join("layout.safetensors"), &meta)
        .map_err(Failure::Internal)?;
    held.plot()?;
    Ok(*cost.borrow())
}

/// Samples, decodes and scores iteration `it`.
#[allow(clippy::too_many_arguments)]
fn iterate(
    m: &Model,
    policy: &LayoutModel,
    reference: &LayoutModel,
    c: &GrpoConfig,
    splits: &[Split],
    reward: &Weighted,
    it: usize,
    span: usize,
    grid: (usize, usize),
    dev: &Device,
    opts: &dyn Fn(usize, Vec<usize>) -> RolloutOptions,
) -> candle_core::Result<Iteration> {
    let t0 = Instant::now();
    let drawn = train_scenes(c, splits, it, m.size as u32);
    let layouts: Vec<SceneLayout> = drawn
        .iter()
        .map(|(s, _)| synth_layout(s, grid, false))
        .collect::<Result<_, _>>()
        .map_err(candle_core::Error::msg)?;
    let layouts = repeat(&layouts, c.group);
    let prompts: Vec<&str> = drawn.iter().map(|(s, _)| s.scene.prompt.as_str()).collect();
    let prompts = repeat(&prompts, c.group);
    let ids = policy
        .base
        .tokenizer
        .batch(&prompts, policy.base.max_len, dev)
        .map_err(candle_core::Error::wrap)?;
    let p = policy.prepare(&layouts, grid, dev)?;
    let sde = pick_steps(
        span,
        c.sde_steps,
        c.seed ^ (it as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
    );
    let o = opts(it, sde);
    let reference = (c.beta > 0.0).then_some(reference);
    let roll = rollout(policy, reference, &ids, &p, m.vae.cfg.latent, &o)?;
    let rollout_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let images = to_rgb8(&m.vae.decode_tokens(&roll.latents, grid.0, grid.1)?)?;
    let truths: Vec<&Truth> = drawn
        .iter()
        .flat_map(|(_, t)| std::iter::repeat_n(t, c.group))
        .collect();
    let scored = reward.score_batch(&images, &truths);
    let totals: Vec<f64> = scored.iter().map(|s| s.total).collect();
    let mean = |v: &mut dyn Iterator<Item = f64>| {
        let (s, k) = v.fold((0.0, 0usize), |(s, k), x| (s + x, k + 1));
        if k == 0 { f64::NAN } else { s / k as f64 }
    };
    let parts = (0..reward.parts.len())
        .map(|j| mean(&mut scored.iter().filter_map(|s| s.parts[j])))
        .collect();
    Ok(Iteration {
        index: it,
        layouts,
        ids,
        roll,
        opts: o,
        adv: group_advantages(&totals, c.group),
        reward: (mean(&mut totals.iter().copied()), parts),
        rollout_s,
        reward_s: t1.elapsed().as_secs_f64(),
    })
}
