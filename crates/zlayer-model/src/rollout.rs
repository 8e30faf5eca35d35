//! Flow-GRPO on the layout branch: rollouts that store what the update needs, and the
//! policy loss over them (DESIGN.md §4.6).
//!
//! A rollout samples as [`LayoutModel::sample`] does (guidance against the empty prompt
//! without the branch), but on a few chosen steps it takes the SDE step of [`crate::grpo`]
//! and stores the step's input, output, log-probability, unconditional velocity and the
//! frozen reference branch's mean. Every other step is the plain Euler step (Flow-GRPO-Fast
//! and MixGRPO: noise and training on one or two steps suffice). A group's samples start
//! from the same noise, so they differ only by what the SDE steps drew, and a group's
//! advantages credit exactly those steps.

use crate::grpo::{SdeStep, clipped_objective, sde_step};
use crate::layout_model::{LayoutModel, Prepared};
use crate::sampling::{guided, noise, schedule};
use candle_core::{DType, Result, Tensor};

/// How a rollout samples.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// Euler steps of the whole schedule.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: none).
    pub guidance: f64,
    /// The SDE's noise level a.
    pub noise_level: f64,
    /// The steps (indices into the schedule, each with the branch on) that take the SDE
    /// step and are trained.
    pub sde: Vec<usize>,
    /// Samples per scene; a scene's samples share their starting noise.
    pub group: usize,
    /// Seed of the starting noise and of every SDE draw.
    pub seed: u64,
}

/// What one SDE step of a rollout stored, for every sample (N, …).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The step's index in the schedule.
    pub k: usize,
    /// Its time and the next.
    pub t: f64,
    /// The next time.
    pub next: f64,
    /// Input latents (N, L, C).
    pub x: Tensor,
    /// The drawn output (N, L, C).
    pub x_next: Tensor,
    /// log p of the draw under the sampling policy (N,).
    pub logp_old: Tensor,
    /// The unconditional velocity (N, L, C), when guided: it does not depend on the branch.
    pub uncond: Option<Tensor>,
    /// The reference branch's step mean (N, L, C), for the KL penalty.
    pub mean_ref: Option<Tensor>,
}

/// A group of trajectories: the final latents and the stored SDE steps.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Final latent tokens (N, L, C).
    pub latents: Tensor,
    /// The SDE steps, in schedule order.
    pub stored: Vec<Stored>,
    /// The σ cap (the schedule's second time).
    pub t_cap: f64,
}

/// The guided velocity with the branch (and its layout and order guidance), and the unconditional one
/// it was guided against.
fn velocity(
    m: &LayoutModel,
    x: &Tensor,
    (t, k, steps): (f64, usize, usize),
    ids: &Tensor,
    p: &Prepared,
    guidance: f64,
    uncond: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let n = x.dim(0)?;
    let dev = x.device();
    let tt = Tensor::full(t as f32, n, dev)?;
    // With the branch's layout and order guidance, as the sampler draws it.
    let vc = m.layout_guided(
        m.velocity_only(x, &tt, ids, p)?,
        x,
        &tt,
        ids,
        p,
        m.grounding().at(k, steps),
    )?;
    if guidance <= 1.0 {
        return Ok((vc, None));
    }
    let vu = match uncond {
        Some(u) => u.clone(),
        None => {
            let empty = Tensor::zeros((n, 1), DType::U32, dev)?;
            m.base.velocity(x, &tt, &empty, p.grid_size())?.detach()
        }
    };
    Ok((guided(&vc, &vu, guidance)?, Some(vu)))
}

/// The seed of step k's SDE draw.
fn step_seed(seed: u64, k: usize) -> u64 {
    seed ^ (k as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// Samples `N = scenes × group` trajectories with `policy` (rows of `ids` and `p` are the
/// scenes' repeated `group` times, consecutively), storing the SDE steps; `reference`, when
/// given, adds its step means for the KL penalty. Nothing here keeps a gradient.
pub fn rollout(
    policy: &LayoutModel,
    reference: Option<&LayoutModel>,
    ids: &Tensor,
    p: &Prepared,
    channels: usize,
    o: &RolloutOptions,
) -> Result<Rollout> {
    let dev = ids.device();
    let n = ids.dim(0)?;
    if o.group == 0 || !n.is_multiple_of(o.group) {
        candle_core::bail!("{n} samples are not whole groups of {}", o.group);
    }
    let (gh, gw) = p.grid_size();
    let l = gh * gw;
    let times = schedule(o.steps, l, true);
    let t_cap = times.get(1).copied().unwrap_or(0.0);
    let starts = noise((n / o.group, l, channels), o.seed, dev)?;
    let rows: Vec<u32> = (0..n).map(|i| (i / o.group) as u32).collect();
    let mut x = starts.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
    let mut stored = Vec::new();
    for (k, w) in times.windows(2).enumerate() {
        let (t, next) = (w[0], w[1]);
        let (v, vu) = velocity(policy, &x, (t, k, o.steps), ids, p, o.guidance, None)?;
        let v = v.detach();
        if !o.sde.contains(&k) {
            x = (&x + (v * (next - t))?)?;
            continue;
        }
        let step = sde_step(&x, &v, t, next, o.noise_level, t_cap)?;
        let x_next = step.sample(step_seed(o.seed, k))?;
        let mean_ref = reference
            .map(|r| -> Result<Tensor> {
                let (vr, _) = velocity(r, &x, (t, k, o.steps), ids, p, o.guidance, vu.as_ref())?;
                Ok(sde_step(&x, &vr.detach(), t, next, o.noise_level, t_cap)?.mean)
            })
            .transpose()?;
        stored.push(Stored {
            k,
            t,
            next,
            logp_old: step.log_prob(&x_next)?,
            x: x.clone(),
            x_next: x_next.clone(),
            uncond: vu,
            mean_ref,
        });
        x = x_next;
    }
    Ok(Rollout {
        latents: x,
        stored,
        t_cap,
    })
}

/// What one policy loss measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyStats {
    /// The clipped surrogate, averaged over the stored steps.
    pub surrogate: f32,
    /// The KL to the reference, averaged over samples and steps (0 without one).
    pub kl: f32,
    /// The share of (sample, step) ratios the clip held.
    pub clipped: f64,
}

/// The loss of the stored steps of rows `first .. first + len` of `roll` (whose prompts
/// and layouts are `ids` and `p`), with advantages `adv` (len,): the clipped surrogate plus
/// `beta` times the KL to the stored reference means, averaged over steps.
#[allow(clippy::too_many_arguments)]
pub fn policy_loss(
    policy: &LayoutModel,
    ids: &Tensor,
    p: &Prepared,
    roll: &Rollout,
    (first, len): (usize, usize),
    adv: &Tensor,
    (clip, beta): (f64, f64),
    o: &RolloutOptions,
) -> Result<(Tensor, PolicyStats)> {
    if roll.stored.is_empty() {
        candle_core::bail!("the rollout stored no SDE step to train on");
    }
    let mut total: Option<Tensor> = None;
    let mut stats = PolicyStats::default();
    for s in &roll.stored {
        let rows = |t: &Tensor| t.narrow(0, first, len);
        let x = rows(&s.x)?;
        let uncond = s.uncond.as_ref().map(rows).transpose()?;
        let (v, _) = velocity(
            policy,
            &x,
            (s.t, s.k, o.steps),
            ids,
            p,
            o.guidance,
            uncond.as_ref(),
        )?;
        let step: SdeStep = sde_step(&x, &v, s.t, s.next, o.noise_level, roll.t_cap)?;
        let logp = step.log_prob(&rows(&s.x_next)?)?;
        let (mut loss, clipped) = clipped_objective(&logp, &rows(&s.logp_old)?, adv, clip)?;
        stats.surrogate += loss.to_scalar::<f32>()?;
        stats.clipped += clipped;
        if let (Some(r), true) = (&s.mean_ref, beta > 0.0) {
            let kl = step.kl(&rows(r)?)?.mean_all()?;
            stats.kl += kl.to_scalar::<f32>()?;
            loss = (loss + (kl * beta)?)?;
        }
        total = Some(match total {
            Some(t) => (t + loss)?,
            None => loss,
        });
    }
    let k = roll.stored.len();
    stats.surrogate /= k as f32;
    stats.kl /= k as f32;
    stats.clipped /= k as f64;
    Ok(((total.expect("one stored step") / k as f64)?, stats))
}
