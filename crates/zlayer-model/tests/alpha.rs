//! The alpha-aware VAE: opaque initialisation reproduces the RGB VAE, and the composite loss
//! is the mean squared composite error over every background.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::max_diff;
use zlayer_model::alpha::{composite_loss, loss, opaque_drift, opaque_init, rgba_config};
use zlayer_model::sampling::noise;
use zlayer_model::vae::{Vae, VaeConfig};

fn small() -> VaeConfig {
    VaeConfig {
        channels: vec![8, 16, 16],
        latent: 4,
        ..VaeConfig::tiny()
    }
}

/// An RGB VAE with random weights (biases too) and its RGBA version, opaque-initialised.
fn pair(dev: &Device) -> (Vae, Vae, VarMap) {
    let cfg = small();
    let rgb_vm = VarMap::new();
    let rgb = Vae::new(
        &cfg,
        zlayer_model::init::seeded(&rgb_vm, 3, DType::F32, dev),
    )
    .unwrap();
    // Non-zero biases and norms, so that a wrong copy cannot hide behind an initial zero.
    for (k, var) in rgb_vm.all_vars().iter().enumerate() {
        let t = var.as_tensor();
        let shaken = (t + noise(t.shape(), 100 + k as u64, dev).unwrap() * 0.05).unwrap();
        var.set(&shaken).unwrap();
    }
    let tensors = rgb_vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let vm = VarMap::new();
    let rgba = Vae::new(
        &rgba_config(&cfg),
        VarBuilder::from_varmap(&vm, DType::F32, dev),
    )
    .unwrap();
    opaque_init(&vm, &tensors).unwrap();
    (rgb, rgba, vm)
}

#[test]
fn an_opaque_image_round_trips_as_the_rgb_vae_does_at_step_zero() {
    let dev = Device::Cpu;
    let (rgb, rgba, _) = pair(&dev);
    for seed in 0..4 {
        let colour = noise((2, 3, 16, 16), seed, &dev).unwrap().tanh().unwrap();
        let opaque = Tensor::cat(
            &[
                &colour,
                &Tensor::ones((2, 1, 16, 16), DType::F32, &dev).unwrap(),
            ],
            1,
        )
        .unwrap();
        let (z, z4) = (rgb.encode(&colour).unwrap(), rgba.encode(&opaque).unwrap());
        assert!(
            max_diff(&z, &z4) < 1e-5,
            "latents differ by {}",
            max_diff(&z, &z4)
        );
        let out = rgba.decode(&z4).unwrap();
        let want = rgb.decode(&z).unwrap();
        assert!(max_diff(&out.narrow(1, 0, 3).unwrap(), &want) < 1e-5);
        let alpha = out.narrow(1, 3, 1).unwrap();
        assert_eq!(
            max_diff(&alpha, &alpha.ones_like().unwrap()),
            0.0,
            "alpha is exactly 1"
        );
    }
}

#[test]
fn the_composite_loss_is_the_mean_square_error_over_every_background() {
    let dev = Device::Cpu;
    let shape = (3, 4, 5, 7);
    for seed in 0..20 {
        let p = noise(shape, seed, &dev).unwrap().tanh().unwrap();
        let t = noise(shape, seed + 50, &dev).unwrap().tanh().unwrap();
        let got = composite_loss(&p, &t).unwrap().to_scalar::<f32>().unwrap() as f64;
        // Direct: composite both over b = (j + ½)/n and average the squared differences.
        let (pv, tv): (Vec<f32>, Vec<f32>) = (
            p.flatten_all().unwrap().to_vec1().unwrap(),
            t.flatten_all().unwrap().to_vec1().unwrap(),
        );
        let (b, c, h, w) = shape;
        let at = |v: &[f32], i: usize, ch: usize, q: usize| {
            (v[(i * c + ch) * h * w + q] as f64 + 1.0) / 2.0
        };
        let n = 2000;
        let mut sum = 0.0;
        for i in 0..b {
            for q in 0..h * w {
                let (ap, a_t) = (at(&pv, i, 3, q), at(&tv, i, 3, q));
                for ch in 0..3 {
                    let (cp, ct) = (at(&pv, i, ch, q), at(&tv, i, ch, q));
                    for j in 0..n {
                        let bg = (j as f64 + 0.5) / n as f64;
                        let d = (ct * a_t + bg * (1.0 - a_t)) - (cp * ap + bg * (1.0 - ap));
                        sum += d * d;
                    }
                }
            }
        }
        let want = sum / (n * b * 3 * h * w) as f64;
        assert!(
            (got - want).abs() < 1e-5 * want.max(1e-3),
            "{got} against {want}"
        );
    }
    // Transparent pixels of any colour composite to the background alone: no error.
    let mut p = noise(shape, 7, &dev).unwrap().tanh().unwrap();
    let mut t = noise(shape, 8, &dev).unwrap().tanh().unwrap();
    let clear = Tensor::full(-1f32, (3, 1, 5, 7), &dev).unwrap();
    p = Tensor::cat(&[&p.narrow(1, 0, 3).unwrap(), &clear], 1).unwrap();
    t = Tensor::cat(&[&t.narrow(1, 0, 3).unwrap(), &clear], 1).unwrap();
    assert_eq!(
        composite_loss(&p, &t).unwrap().to_scalar::<f32>().unwrap(),
        0.0
    );
}

#[test]
fn training_reaches_the_alpha_paths() {
    let dev = Device::Cpu;
    let (_, rgba, vm) = pair(&dev);
    let x = noise((2, 4, 16, 16), 9, &dev).unwrap().tanh().unwrap();
    let eps = noise((2, 4, 4, 4), 10, &dev).unwrap();
    let (total, comp, _) = loss(&rgba, &x, &eps, 1e-4).unwrap();
    assert!(comp.to_scalar::<f32>().unwrap() > 0.0);
    let grads = total.backward().unwrap();
    let missing = zlayer_model::optim::params_without_gradient(&vm, &grads);
    assert!(missing.is_empty(), "no gradient reaches {missing:?}");
    let data = vm.data().lock().unwrap();
    let w = data["decoder.conv_out.weight"].as_tensor();
    let g = grads.get(w).unwrap().narrow(0, 3, 1).unwrap();
    let norm = g
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(norm > 0.0, "the alpha output's zero weights get a gradient");
}

#[test]
fn opaque_drift_is_zero_at_the_start_and_pulls_the_encoder_back() {
    let dev = Device::Cpu;
    let (rgb, rgba, vm) = pair(&dev);
    let colour = noise((2, 3, 16, 16), 4, &dev).unwrap().tanh().unwrap();
    let ones = Tensor::ones((2, 1, 16, 16), DType::F32, &dev).unwrap();
    let opaque = Tensor::cat(&[&colour, &ones], 1).unwrap();
    let d0 = opaque_drift(&rgba, &rgb, &opaque)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d0 < 1e-10, "{d0}");
    let w = vm.data().lock().unwrap()["encoder.conv_in.weight"].clone();
    let moved = (w.as_tensor() + noise(w.as_tensor().shape(), 5, &dev).unwrap() * 0.1).unwrap();
    w.set(&moved).unwrap();
    let drift = opaque_drift(&rgba, &rgb, &opaque).unwrap();
    assert!(drift.to_scalar::<f32>().unwrap() > 1e-4);
    let grads = drift.backward().unwrap();
    assert!(
        grads.get(w.as_tensor()).is_some(),
        "the encoder is pulled back"
    );
}
