//! Known-region sampling: the kept region ends on its latent whatever the model says, the
//! free region samples as it would alone, and no known latent is plain sampling.

mod common;

use candle_core::{Device, Result, Tensor};
use common::max_diff;
use zlayer_model::inpaint::{Known, denoise_known};
use zlayer_model::sampling::{denoise_steps, noise, schedule};

const SHAPE: (usize, usize, usize) = (2, 16, 4);

/// A field that acts on each element alone (so free elements cannot see kept ones) and is
/// far from any straight path: v = sin(3x)·(1 + t) + k/10.
fn field(x: &Tensor, t: f64, k: usize) -> Result<Tensor> {
    ((x * 3.0)?.sin()? * (1.0 + t))? + (k as f64 / 10.0)
}

fn keep_mask(seed: u64, dev: &Device) -> Tensor {
    let u = noise((SHAPE.0, SHAPE.1, 1), seed, dev).unwrap();
    u.ge(0.0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
}

#[test]
fn no_known_latent_is_plain_sampling_bit_for_bit() {
    let dev = Device::Cpu;
    let times = schedule(12, 16, true);
    let eps = noise(SHAPE, 1, &dev).unwrap();
    let plain = denoise_steps(field, eps.clone(), &times).unwrap();
    let none = denoise_known(field, eps, &times, None).unwrap();
    assert_eq!(max_diff(&plain, &none), 0.0);
}

#[test]
fn kept_region_ends_on_its_latent_and_the_rest_samples_freely() {
    let dev = Device::Cpu;
    for (seed, steps) in [(0u64, 4usize), (1, 10), (2, 28), (3, 50)] {
        let times = schedule(steps, 16, true);
        let eps = noise(SHAPE, 10 + seed, &dev).unwrap();
        let latent = (noise(SHAPE, 20 + seed, &dev).unwrap() * 2.0).unwrap();
        let keep = keep_mask(30 + seed, &dev);
        let known = Known {
            latent: latent.clone(),
            keep: keep.clone(),
            start: 1.0,
        };
        let out = denoise_known(field, eps.clone(), &times, Some(&known)).unwrap();
        let free = denoise_steps(field, eps, &times).unwrap();
        let on_kept = |a: &Tensor| a.broadcast_mul(&keep).unwrap();
        let on_free = |a: &Tensor| a.broadcast_mul(&(1.0 - &keep).unwrap()).unwrap();
        let kept_err = max_diff(&on_kept(&out), &on_kept(&latent));
        assert!(
            kept_err < 1e-4,
            "{steps} steps: kept region off by {kept_err}"
        );
        let free_err = max_diff(&on_free(&out), &on_free(&free));
        assert_eq!(free_err, 0.0, "{steps} steps: the free region changed");
        // The test means something: the field alone ends far from the latent.
        assert!(max_diff(&on_kept(&free), &on_kept(&latent)) > 0.5);
    }
}

#[test]
fn a_refinement_starts_from_the_noised_latent_at_the_first_time_below_start() {
    let dev = Device::Cpu;
    let times = schedule(20, 16, false);
    let latent = noise(SHAPE, 5, &dev).unwrap();
    let eps = noise(SHAPE, 6, &dev).unwrap();
    let known = Known {
        latent: latent.clone(),
        keep: Tensor::zeros((SHAPE.0, SHAPE.1, 1), candle_core::DType::F32, &dev).unwrap(),
        start: 0.33,
    };
    let k0 = known.first_step(&times);
    assert_eq!(k0, 14, "t = {} is the first at or below 0.33", times[k0]);
    // With the exact velocity of a point mass at the latent, the refinement returns it.
    let exact = |x: &Tensor, t: f64, _: usize| (x - &latent)? / t;
    let out = denoise_known(exact, eps.clone(), &times, Some(&known)).unwrap();
    assert!(max_diff(&out, &latent) < 1e-5);
    // The step indices the field sees are those of the whole schedule.
    let seen = std::cell::RefCell::new(Vec::new());
    let log = |x: &Tensor, _: f64, k: usize| {
        seen.borrow_mut().push(k);
        x.zeros_like()
    };
    denoise_known(log, eps, &times, Some(&known)).unwrap();
    assert_eq!(*seen.borrow(), (14..20).collect::<Vec<_>>());
}
