//! Rectified flow, Flux convention (DESIGN.md §2): `x_t = (1 − t)·x₀ + t·ε`, target
//! `v = ε − x₀`, sampled from t = 1 to 0 with Euler steps `x ← x + (t_next − t)·v`.
//!
//! Free functions generic over [`Velocity`], as black-forest-labs/flux `sampling.py` keeps
//! them apart from the model: `noise`, `schedule`, `denoise`. Randomness is our own seeded
//! generator, because candle cannot seed its CPU RNG and every sample must be reproducible.

use candle_core::{Device, Result, Shape, Tensor};

/// Anything that predicts the flow velocity at (x, t).
pub trait Velocity {
    /// v(x, t), same shape as x; `t` is in [0, 1].
    fn velocity(&self, x: &Tensor, t: f64) -> Result<Tensor>;
}

impl<F: Fn(&Tensor, f64) -> Result<Tensor>> Velocity for F {
    fn velocity(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        self(x, t)
    }
}

pub use zlayer_scene::rng::Rng;

/// Gaussian noise of a shape, from a seed.
pub fn noise(shape: impl Into<Shape>, seed: u64, dev: &Device) -> Result<Tensor> {
    let shape = shape.into();
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| rng.normal() as f32)
        .collect();
    Tensor::from_vec(v, shape, dev)
}

/// Flux's resolution shift: `exp(μ) / (exp(μ) + (1/t − 1)^σ)` with σ = 1.
pub fn time_shift(mu: f64, t: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    if mu == 0.0 {
        // The identity, exactly: unshifted training draws stay bit for bit as they were.
        return t;
    }
    mu.exp() / (mu.exp() + (1.0 / t - 1.0))
}

/// μ for a sequence length: linear from 0.5 at 256 tokens to 1.15 at 4096 (Flux's defaults).
pub fn shift_mu(image_seq_len: usize) -> f64 {
    let (x1, y1, x2, y2) = (256.0, 0.5, 4096.0, 1.15);
    let m = (y2 - y1) / (x2 - x1);
    m * image_seq_len as f64 + (y1 - m * x1)
}

/// `steps + 1` times from 1 to 0, shifted towards 1 for long sequences when `shift` is set.
pub fn schedule(steps: usize, image_seq_len: usize, shift: bool) -> Vec<f64> {
    let mu = shift_mu(image_seq_len);
    (0..=steps)
        .map(|i| {
            let t = 1.0 - i as f64 / steps as f64;
            if shift { time_shift(mu, t) } else { t }
        })
        .collect()
}

/// Integrates from `x` (noise at t = times[0]) along the schedule with Euler steps.
pub fn denoise(model: &impl Velocity, x: Tensor, times: &[f64]) -> Result<Tensor> {
    denoise_steps(|x: &Tensor, t, _| model.velocity(x, t), x, times)
}

/// A step observer: `(done, total) -> keep going`.
type Observer = Box<dyn FnMut(usize, usize) -> bool>;

thread_local! {
    /// The step observer of this thread's samplers (see [`observed`]).
    static OBSERVER: std::cell::RefCell<Option<Observer>> = const { std::cell::RefCell::new(None) };
}

/// The message of the error a sampler stops with when its observer asks it to.
pub const STOPPED: &str = "sampling stopped by its observer";

/// Runs `f` with `observe(done, total)` called after every Euler step of every sampler that
/// runs on this thread inside it; when `observe` returns false, that sampler stops with the
/// error [`STOPPED`]. A server reports progress and cancels jobs this way without threading a
/// callback through every model's `sample`. The previous observer is restored afterwards.
pub fn observed<R>(
    observe: impl FnMut(usize, usize) -> bool + 'static,
    f: impl FnOnce() -> R,
) -> R {
    let before = OBSERVER.with(|o| o.borrow_mut().replace(Box::new(observe)));
    let out = f();
    OBSERVER.with(|o| *o.borrow_mut() = before);
    out
}

/// Tells this thread's observer that step `done` of `total` finished; false means stop.
fn step_done(done: usize, total: usize) -> bool {
    OBSERVER.with(|o| o.borrow_mut().as_mut().is_none_or(|f| f(done, total)))
}

/// [`denoise`] with a field that also gets the step's index (0 first): for methods that act
/// on some steps only, or scale with the step.
pub fn denoise_steps(
    field: impl Fn(&Tensor, f64, usize) -> Result<Tensor>,
    x: Tensor,
    times: &[f64],
) -> Result<Tensor> {
    let mut x = x;
    for (k, w) in times.windows(2).enumerate() {
        let (t, next) = (w[0], w[1]);
        // Detached: with trainable weights (a model under training, a bench) every step's
        // graph would otherwise stay alive through x until sampling ends.
        let v = field(&x, t, k)?.detach();
        x = (x + (v * (next - t))?)?;
        if !step_done(k + 1, times.len() - 1) {
            return Err(candle_core::Error::Msg(STOPPED.into()));
        }
    }
    Ok(x)
}

/// Classifier-free guidance: `v_u + g·(v_c − v_u)`.
pub fn guided(cond: &Tensor, uncond: &Tensor, scale: f64) -> Result<Tensor> {
    uncond + ((cond - uncond)? * scale)?
}

/// A training pair at time t: `(x_t, v)` with `x_t = (1 − t)·x₀ + t·ε` and `v = ε − x₀`.
/// `t` is (B,) and broadcasts over the other dimensions.
pub fn flow_pair(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut shape = vec![t.dim(0)?];
    shape.extend(std::iter::repeat_n(1, x0.rank() - 1));
    let t = t.reshape(shape)?;
    let xt = (x0.broadcast_mul(&(1.0 - &t)?)? + eps.broadcast_mul(&t)?)?;
    Ok((xt, (eps - x0)?))
}

/// A training draw for latents `x0` (B, …): logit-normal times t (B,), then noise, both from
/// `seed`; returns `(x_t, t, v)` as [`flow_pair`] makes them.
pub fn training_draw(x0: &Tensor, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
    training_draw_shifted(x0, seed, 0.0)
}

/// [`training_draw`] with the times moved by [`time_shift`] with `mu` (0 leaves them):
/// ln 3 puts the median time at 0.75, so more of the batch sees images that are mostly
/// noise, where only the prompt can tell the colours.
pub fn training_draw_shifted(x0: &Tensor, seed: u64, mu: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let b = x0.dim(0)?;
    let dev = x0.device();
    let mut rng = Rng::new(seed);
    let t: Vec<f32> = (0..b)
        .map(|_| time_shift(mu, rng.logit_normal()) as f32)
        .collect();
    let t = Tensor::from_vec(t, b, dev)?;
    let eps = noise(x0.shape(), rng.next_u64(), dev)?;
    let (xt, v) = flow_pair(x0, &eps, &t)?;
    Ok((xt, t, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_runs_from_one_to_zero_and_shifts_up() {
        let plain = schedule(10, 256, false);
        assert_eq!((plain[0], plain[10], plain.len()), (1.0, 0.0, 11));
        let shifted = schedule(10, 4096, true);
        assert_eq!((shifted[0], shifted[10]), (1.0, 0.0));
        for (s, p) in shifted.iter().zip(&plain).skip(1).take(9) {
            assert!(s > p, "long sequences spend more steps at high noise");
        }
        assert!(shifted.windows(2).all(|w| w[0] > w[1]));
        assert!((shift_mu(4096) - 1.15).abs() < 1e-12 && (shift_mu(256) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn euler_follows_a_straight_flow_exactly() -> Result<()> {
        // The exact velocity of the straight path to x₀ is (x − x₀) / t: any schedule lands on x₀.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &dev)?;
        let oracle = |x: &Tensor, t: f64| (x - &x0)? / t;
        let out = denoise(&oracle, noise(3, 7, &dev)?, &schedule(7, 1024, true))?;
        let diff = (out - &x0)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn noise_is_seeded_and_standard() -> Result<()> {
        let dev = Device::Cpu;
        let a = noise((100, 100), 3, &dev)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(
            a,
            noise((100, 100), 3, &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?
        );
        assert_ne!(
            a,
            noise((100, 100), 4, &dev)?
                .flatten_all()?
                .to_vec1::<f32>()?
        );
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / a.len() as f32;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        Ok(())
    }

    #[test]
    fn flow_pair_interpolates() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[1f32, 1.0], [2.0, 2.0]], &dev)?;
        let eps = Tensor::new(&[[3f32, -1.0], [0.0, 4.0]], &dev)?;
        let (xt, v) = flow_pair(&x0, &eps, &Tensor::new(&[0.25f32, 1.0], &dev)?)?;
        assert_eq!(xt.to_vec2::<f32>()?, vec![vec![1.5, 0.5], vec![0.0, 4.0]]);
        assert_eq!(v.to_vec2::<f32>()?, vec![vec![2.0, -2.0], vec![-2.0, 2.0]]);
        Ok(())
    }

    #[test]
    fn an_observer_sees_every_step_and_can_stop_the_sampler() {
        let dev = candle_core::Device::Cpu;
        let times = [1.0, 0.75, 0.5, 0.25, 0.0];
        let field = |x: &Tensor, _t: f64, _k: usize| x.affine(0.0, 1.0);
        let x = Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap();
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let log = seen.clone();
        let out = observed(
            move |d, t| {
                log.borrow_mut().push((d, t));
                true
            },
            || denoise_steps(field, x.clone(), &times),
        )
        .unwrap();
        assert_eq!(*seen.borrow(), [(1, 4), (2, 4), (3, 4), (4, 4)]);
        // Unobserved, the same integration gives the same numbers.
        let plain = denoise_steps(field, x.clone(), &times).unwrap();
        assert_eq!(
            out.to_vec1::<f32>().unwrap(),
            plain.to_vec1::<f32>().unwrap()
        );
        let stopped = observed(|d, _| d < 2, || denoise_steps(field, x.clone(), &times));
        assert!(stopped.unwrap_err().to_string().contains(STOPPED));
        // The observer ends with `observed`.
        assert!(denoise_steps(field, x, &times).is_ok());
    }
}
