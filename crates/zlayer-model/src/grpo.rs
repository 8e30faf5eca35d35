//! Flow-GRPO (DESIGN.md §4.6): the stochastic sampler with the Euler ODE's marginals, its
//! Gaussian step log-probabilities, group-normalised advantages and the clipped objective.
//!
//! The SDE step from t to `next` (dt = next − t < 0) with noise level a:
//! σ_t = a·√(t / (1 − t)), mean μ = x + [v + σ_t²/(2t)·(x + (1 − t)·v)]·dt, and
//! x_next = μ + σ_t·√(−dt)·ε. The drift's extra term is the score of the straight-flow
//! marginal (x + (1 − t)·v = ε̂, the predicted noise), which is why the marginals stay the
//! ODE's. At t = 1 the ratio t / (1 − t) is infinite, so σ there is taken at a cap (the
//! schedule's second time, as flow_grpo does).

use crate::sampling::{Rng, noise};
use candle_core::{D, Result, Tensor};

/// The SDE's σ_t for noise level `a`; `t_cap` (< 1) stands in for t where t is above it.
pub fn sde_sigma(a: f64, t: f64, t_cap: f64) -> f64 {
    let tc = t.min(t_cap);
    a * (tc / (1.0 - tc)).sqrt()
}

/// One SDE step's Gaussian: its mean and its standard deviation σ_t·√(−dt).
#[derive(Debug, Clone)]
pub struct SdeStep {
    /// The mean μ, shaped as x.
    pub mean: Tensor,
    /// The standard deviation (0 makes the step the Euler step).
    pub std: f64,
}

/// The Gaussian of the step from `t` to `next` at (x, v) with noise level `a` and σ cap
/// `t_cap`. With `a` = 0 the mean is exactly the Euler step `x + v·dt`.
pub fn sde_step(x: &Tensor, v: &Tensor, t: f64, next: f64, a: f64, t_cap: f64) -> Result<SdeStep> {
    let dt = next - t;
    let sigma = sde_sigma(a, t, t_cap);
    if sigma == 0.0 || t <= 0.0 {
        // The same expression as `sampling::denoise_steps`, so a = 0 reproduces it bit for bit.
        return Ok(SdeStep {
            mean: (x + (v * dt)?)?,
            std: 0.0,
        });
    }
    let k = sigma * sigma / (2.0 * t);
    // v + k·(x + (1 − t)·v) = (1 + k(1 − t))·v + k·x
    let drift = ((v * (1.0 + k * (1.0 - t)))? + (x * k)?)?;
    Ok(SdeStep {
        mean: (x + (drift * dt)?)?,
        std: sigma * (-dt).sqrt(),
    })
}

impl SdeStep {
    /// A draw from the step: `mean + std·ε`, ε from `seed`.
    pub fn sample(&self, seed: u64) -> Result<Tensor> {
        if self.std == 0.0 {
            return Ok(self.mean.clone());
        }
        let eps = noise(self.mean.shape(), seed, self.mean.device())?;
        &self.mean + (eps * self.std)?
    }

    /// log p(x_next) per sample (B,): the Gaussian log-density of each element, averaged
    /// over all but the first dimension.
    pub fn log_prob(&self, x_next: &Tensor) -> Result<Tensor> {
        if self.std <= 0.0 {
            candle_core::bail!("a step with no noise (std 0) has no density");
        }
        let var = self.std * self.std;
        let constant = -self.std.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        let sq = (x_next - &self.mean)?.sqr()?.flatten_from(1)?;
        sq.mean(D::Minus1)?.affine(-1.0 / (2.0 * var), constant)
    }

    /// KL(this ‖ other) per sample (B,) for two steps of the same std: ‖μ − μ_ref‖² / (2σ²)
    /// per element, averaged as [`Self::log_prob`] is.
    pub fn kl(&self, reference: &Tensor) -> Result<Tensor> {
        if self.std <= 0.0 {
            candle_core::bail!("a step with no noise (std 0) has no KL");
        }
        let sq = (&self.mean - reference)?.sqr()?.flatten_from(1)?;
        sq.mean(D::Minus1)? / (2.0 * self.std * self.std)
    }
}

/// Advantages `(r − mean) / (std + 1e-4)` within each consecutive group of `group` rewards
/// (population std); a group of equal rewards gets zeros.
pub fn group_advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    assert!(
        group > 0 && rewards.len().is_multiple_of(group),
        "whole groups"
    );
    rewards
        .chunks(group)
        .flat_map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let std = (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
            g.iter().map(move |r| (r - mean) / (std + 1e-4))
        })
        .collect()
}

/// The clipped surrogate, averaged over samples: `mean(max(−A·ρ, −A·clip(ρ, 1 ± clip)))` with
/// ρ = exp(logp − logp_old); `logp`, `logp_old` and `adv` are (B,). Returns the loss and the
/// share of samples whose ratio the clip held.
pub fn clipped_objective(
    logp: &Tensor,
    logp_old: &Tensor,
    adv: &Tensor,
    clip: f64,
) -> Result<(Tensor, f64)> {
    let ratio = (logp - logp_old)?.exp()?;
    let unclipped = (ratio.neg()? * adv)?;
    let held = ratio.clamp(1.0 - clip, 1.0 + clip)?;
    let clipped = (held.neg()? * adv)?;
    let loss = unclipped.maximum(&clipped)?.mean_all()?;
    let r = ratio.detach().to_vec1::<f32>()?;
    let share =
        r.iter().filter(|&&x| (x as f64 - 1.0).abs() > clip).count() as f64 / r.len().max(1) as f64;
    Ok((loss, share))
}

/// `count` distinct steps out of `0..span`, in order, drawn from `seed`: the steps of one
/// iteration that get the SDE and the update (Flow-GRPO-Fast trains on a few).
pub fn pick_steps(span: usize, count: usize, seed: u64) -> Vec<usize> {
    let count = count.min(span);
    let mut rng = Rng::new(seed);
    let mut all: Vec<usize> = (0..span).collect();
    // A partial Fisher–Yates shuffle: the first `count` are a uniform choice.
    for i in 0..count {
        let j = i + (rng.next_u64() % (span - i) as u64) as usize;
        all.swap(i, j);
    }
    let mut picked = all[..count].to_vec();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{denoise_steps, schedule};
    use candle_core::{Device, Var};

    /// The exact rectified-flow velocity for data x₀ ~ N(m, s²), per element:
    /// v = E[ε | x_t] − E[x₀ | x_t] for x_t = (1 − t)·x₀ + t·ε.
    fn gaussian_velocity(x: &Tensor, t: f64, m: f64, s: f64) -> Result<Tensor> {
        let var = (1.0 - t).powi(2) * s * s + t * t;
        let centred = x.affine(1.0, -(1.0 - t) * m)?;
        let e_eps = (&centred * (t / var))?;
        let e_x0 = centred.affine((1.0 - t) * s * s / var, m)?;
        e_eps - e_x0
    }

    fn moments(x: &Tensor) -> Result<(f64, f64)> {
        let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().map(|&a| a as f64).sum::<f64>() / n;
        let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
        Ok((mean, var))
    }

    #[test]
    fn with_no_noise_the_sde_is_the_euler_sampler_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let times = schedule(12, 256, true);
        let field = |x: &Tensor, t: f64, _k: usize| gaussian_velocity(x, t, 0.7, 0.4);
        let x = noise((4, 64), 5, &dev)?;
        let euler = denoise_steps(field, x.clone(), &times)?;
        let mut y = x;
        for w in times.windows(2) {
            let v = field(&y, w[0], 0)?;
            let step = sde_step(&y, &v, w[0], w[1], 0.0, times[1])?;
            assert_eq!(step.std, 0.0);
            y = step.sample(99)?;
        }
        let (a, b): (Vec<f32>, Vec<f32>) =
            (euler.flatten_all()?.to_vec1()?, y.flatten_all()?.to_vec1()?);
        assert_eq!(a, b);
        Ok(())
    }

    #[test]
    fn the_sde_keeps_the_flow_marginals_on_a_gaussian_oracle() -> Result<()> {
        // Data N(m, s²): the straight flow's marginal at t is N((1 − t)m, (1 − t)²s² + t²).
        let (m, s) = (1.0, 0.5);
        let dev = Device::Cpu;
        let steps = 200;
        let times: Vec<f64> = (0..=steps).map(|i| 1.0 - i as f64 / steps as f64).collect();
        let mut x = noise(40_000, 11, &dev)?;
        let mut checked = 0;
        for (k, w) in times.windows(2).enumerate() {
            let v = gaussian_velocity(&x, w[0], m, s)?;
            x = sde_step(&x, &v, w[0], w[1], 0.7, times[1])?.sample(1000 + k as u64)?;
            let t = w[1];
            if (k + 1) % 50 == 0 {
                let (mean, var) = moments(&x)?;
                let want = ((1.0 - t) * m, (1.0 - t).powi(2) * s * s + t * t);
                assert!(
                    (mean - want.0).abs() < 0.03 && (var - want.1).abs() < 0.04 * want.1 + 0.01,
                    "t = {t}: mean {mean} var {var}, want {want:?}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 4);
        // The noise is real: one SDE path differs from the ODE's.
        let ode = denoise_steps(
            |x: &Tensor, t: f64, _| gaussian_velocity(x, t, m, s),
            noise(40_000, 11, &dev)?,
            &times,
        )?;
        let gap = (ode - &x)?.abs()?.mean_all()?.to_scalar::<f32>()?;
        assert!(gap > 0.05, "{gap}");
        Ok(())
    }

    #[test]
    fn log_probabilities_are_the_gaussian_density_averaged_per_sample() -> Result<()> {
        let dev = Device::Cpu;
        let x = noise((3, 2, 5), 1, &dev)?;
        let v = noise((3, 2, 5), 2, &dev)?;
        let (t, next, a) = (0.6, 0.5, 0.7);
        let step = sde_step(&x, &v, t, next, a, 0.95)?;
        let sigma = a * (t / (1.0 - t)).sqrt();
        assert!((step.std - sigma * 0.1f64.sqrt()).abs() < 1e-12);
        let xn = step.sample(3)?;
        let got: Vec<f32> = step.log_prob(&xn)?.to_vec1()?;
        let (xs, vs, ns): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            x.flatten_all()?.to_vec1()?,
            v.flatten_all()?.to_vec1()?,
            xn.flatten_all()?.to_vec1()?,
        );
        for (b, &g) in got.iter().enumerate() {
            let mut sum = 0.0;
            for e in 0..10 {
                let i = b * 10 + e;
                let (x, v, y) = (xs[i] as f64, vs[i] as f64, ns[i] as f64);
                let mu = x + (v + sigma * sigma / (2.0 * t) * (x + (1.0 - t) * v)) * (next - t);
                let sd = step.std;
                sum += -(y - mu).powi(2) / (2.0 * sd * sd)
                    - sd.ln()
                    - 0.5 * (2.0 * std::f64::consts::PI).ln();
            }
            assert!((g as f64 - sum / 10.0).abs() < 1e-4, "{g} {}", sum / 10.0);
        }
        // KL to itself is zero, and grows with the gap between means.
        assert!(
            step.kl(&step.mean)?
                .to_vec1::<f32>()?
                .iter()
                .all(|&k| k == 0.0)
        );
        let moved = step
            .kl(&step.mean.affine(1.0, step.std)?)?
            .to_vec1::<f32>()?;
        assert!(moved.iter().all(|&k| (k - 0.5).abs() < 1e-5), "{moved:?}");
        Ok(())
    }

    #[test]
    fn zero_advantages_give_a_zero_gradient_and_others_do_not() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[0.3f32, -0.2, 0.1, 0.5], &dev)?)?;
        let old = Tensor::new(&[0.25f32, -0.1, 0.1, 0.45], &dev)?;
        let zero = Tensor::zeros(4, candle_core::DType::F32, &dev)?;
        let (loss, _) = clipped_objective(w.as_tensor(), &old, &zero, 0.2)?;
        let g = loss
            .backward()?
            .get(&w)
            .expect("a gradient")
            .to_vec1::<f32>()?;
        assert!(g.iter().all(|&x| x == 0.0), "{g:?}");
        let adv = Tensor::new(&[1f32, -1.0, 0.5, 2.0], &dev)?;
        let (loss, clipped) = clipped_objective(w.as_tensor(), &old, &adv, 0.2)?;
        let g = loss
            .backward()?
            .get(&w)
            .expect("a gradient")
            .to_vec1::<f32>()?;
        // d/dw of −A·exp(w − old)/B where unclipped: −A·ρ/4.
        let rho: Vec<f32> = [0.05f32, -0.1, 0.0, 0.05].iter().map(|d| d.exp()).collect();
        let a = [1f32, -1.0, 0.5, 2.0];
        for k in 0..4 {
            assert!((g[k] + a[k] * rho[k] / 4.0).abs() < 1e-6, "{g:?}");
        }
        assert_eq!(clipped, 0.0);
        // A ratio past the clip, on the side the advantage favours, gets no gradient.
        let far = Tensor::new(&[0.0f32], &dev)?;
        let wv = Var::from_tensor(&Tensor::new(&[0.5f32], &dev)?)?;
        let (loss, clipped) =
            clipped_objective(wv.as_tensor(), &far, &Tensor::new(&[1f32], &dev)?, 0.2)?;
        let g = loss
            .backward()?
            .get(&wv)
            .map(|g| g.to_vec1::<f32>())
            .transpose()?;
        assert!(g.as_ref().is_none_or(|g| g[0] == 0.0), "{g:?}");
        assert_eq!(clipped, 1.0);
        Ok(())
    }

    #[test]
    fn advantages_are_normalised_within_each_group() {
        let a = group_advantages(&[1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5], 4);
        for x in &a[..4] {
            assert!((x.abs() - 1.0).abs() < 1e-3, "{a:?}");
        }
        assert_eq!(&a[4..], &[0.0; 4]);
        assert!((a[0] + a[1]).abs() < 1e-12);
    }

    #[test]
    fn picked_steps_are_distinct_sorted_seeded_and_cover_the_span() {
        let mut seen = vec![0; 10];
        for seed in 0..2000 {
            let p = pick_steps(10, 3, seed);
            assert_eq!(p.len(), 3);
            assert!(p.windows(2).all(|w| w[0] < w[1]) && p[2] < 10);
            assert_eq!(p, pick_steps(10, 3, seed));
            for &k in &p {
                seen[k] += 1;
            }
        }
        // Uniform: each step in about 3/10 of 2,000 draws.
        assert!(seen.iter().all(|&c| (500..700).contains(&c)), "{seen:?}");
        assert_eq!(pick_steps(2, 5, 1), vec![0, 1]);
    }
}
