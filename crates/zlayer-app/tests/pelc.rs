//! DecFormer's training: an interrupted run, resumed across the stage boundary, ends on the
//! same weights as one that never stopped; the blend with α = 1 and s = 0 is z_B exactly.

use candle_core::{DType, Device};
use candle_nn::VarMap;
use zlayer_app::pelc::{LossWeights, PixelTarget, gate, loss, pair, tensors};
use zlayer_model::bundle::VaeBundle;
use zlayer_model::init::seeded;
use zlayer_model::pelc::{DecConfig, DecFormer, compose};
use zlayer_model::train::{LoopConfig, train_loop};
use zlayer_model::vae::{Vae, VaeConfig};

fn vae(dev: &Device) -> VaeBundle {
    let cfg = VaeConfig {
        channels: vec![8, 16, 16],
        latent: 4,
        ..VaeConfig::tiny()
    };
    let vm = VarMap::new();
    let vae = Vae::new(&cfg, seeded(&vm, 1, DType::F32, dev)).unwrap();
    VaeBundle {
        vae,
        cfg,
        shift: 0.1,
        scale: 1.5,
    }
}

/// A DecFormer small enough for a test, over [`vae`]'s 4-channel latents.
fn small() -> DecConfig {
    DecConfig {
        latent: 4,
        prior: vec![8, 8],
        features: 8,
        width: 32,
        heads: 4,
        ..DecConfig::tiny()
    }
}

/// Trains 6 steps (stage one for 3, then the residual warms up) in `dir`, failing once at
/// `fail_at` when given, and returns the final EMA weights.
fn run(dir: &std::path::Path, fail_at: Option<usize>) -> Vec<(String, Vec<f32>)> {
    let dev = Device::Cpu;
    let bundle = vae(&dev);
    let cfg = small();
    let lc = LoopConfig {
        steps: 6,
        lr: 1e-3,
        warmup: 1,
        checkpoint_every: 2,
        clip: 1.0,
        ema: 0.9,
        weight_decay: 0.0,
    };
    let w = LossWeights {
        latent: 1.0,
        halo: 4.0,
        gradient: 1.0,
        target: PixelTarget::RoundTrip,
    };
    let attempt = |fail: Option<usize>| {
        let vm = VarMap::new();
        let dec = DecFormer::new(&cfg, seeded(&vm, 0, DType::F32, &dev)).unwrap();
        train_loop(
            dir,
            "pelc",
            &vm,
            &lc,
            &serde_json::json!({}),
            &dev,
            |step| {
                if Some(step) == fail {
                    candle_core::bail!("interrupted");
                }
                let pairs: Vec<_> = (0..2).map(|i| pair(5, (step * 2 + i) as u64, 32)).collect();
                let batch = tensors(&pairs, 32, &dev)?;
                Ok((
                    loss(&dec, &bundle, &batch, gate(step, 3, 2), w)?.0,
                    Vec::new(),
                ))
            },
            |_| {},
        )
    };
    if fail_at.is_some() {
        assert!(attempt(fail_at).is_err());
    }
    let tr = attempt(None).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tr
        .ema()
        .iter()
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn an_interrupted_run_resumes_across_the_stages_exactly() {
    let base = std::env::temp_dir().join(format!("zlayer-pelc-resume-{}", std::process::id()));
    let (a, b) = (base.join("straight"), base.join("interrupted"));
    for d in [&a, &b] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    let straight = run(&a, None);
    // Step 5 fails after the checkpoint at step 4, past the stage boundary at step 3.
    let resumed = run(&b, Some(5));
    assert_eq!(straight.len(), resumed.len());
    for ((ka, va), (kb, vb)) in straight.iter().zip(&resumed) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs after the resume");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn alpha_one_and_no_residual_is_z_b_exactly() {
    let dev = Device::Cpu;
    let za = zlayer_model::sampling::noise((2, 4, 5, 6), 1, &dev).unwrap();
    let zb = zlayer_model::sampling::noise((2, 4, 5, 6), 2, &dev).unwrap();
    let s = zlayer_model::sampling::noise((2, 4, 5, 6), 3, &dev).unwrap();
    let ones = za.ones_like().unwrap();
    let v = |t: &candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let got = compose(&za, &zb, &ones, &s, 0.0).unwrap();
    assert_eq!(v(&got), v(&zb));
    // α = 0 is z_A, and the gate adds the residual as given.
    let zeros = za.zeros_like().unwrap();
    let got = compose(&za, &zb, &zeros, &s, 1.0).unwrap();
    assert_eq!(v(&got), v(&(&za + &s).unwrap()));
}

#[test]
fn the_composite_target_is_the_blend_of_the_decoded_inputs() {
    let dev = Device::Cpu;
    let bundle = vae(&dev);
    let cfg = small();
    let vm = VarMap::new();
    let dec = DecFormer::new(&cfg, seeded(&vm, 3, DType::F32, &dev)).unwrap();
    // Indices 0 and 2 give instance and soft masks: fractional values, where the targets part.
    let pairs: Vec<_> = [0u64, 2, 4].iter().map(|&i| pair(9, i, 32)).collect();
    let batch = tensors(&pairs, 32, &dev).unwrap();
    let only_l1 = |target| LossWeights {
        latent: 0.0,
        halo: 0.0,
        gradient: 0.0,
        target,
    };
    let (_, [_, l1, _]) =
        loss(&dec, &bundle, &batch, 1.0, only_l1(PixelTarget::Composite)).unwrap();
    // The naive reference, pixel by pixel.
    let v = |t: &candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let [a, b, _, m] = &batch;
    let (za, zb) = (
        zlayer_app::pelc::encode(&bundle, a).unwrap(),
        zlayer_app::pelc::encode(&bundle, b).unwrap(),
    );
    let got =
        v(&zlayer_app::pelc::decode(&bundle, &dec.forward(&za, &zb, m, 1.0).unwrap().z).unwrap());
    let (xa, xb) = (
        v(&zlayer_app::pelc::decode(&bundle, &za).unwrap()),
        v(&zlayer_app::pelc::decode(&bundle, &zb).unwrap()),
    );
    let mask = v(m);
    let plane = 32 * 32;
    let want: f64 = (0..got.len())
        .map(|i| {
            let w = mask[(i / (3 * plane)) * plane + i % plane];
            let x = (1.0 - w) * xa[i] + w * xb[i];
            f64::from((got[i] - x).abs())
        })
        .sum::<f64>()
        / got.len() as f64;
    assert!((f64::from(l1) - want).abs() < 1e-5, "{l1} against {want}");
    let (_, [_, round_trip, _]) =
        loss(&dec, &bundle, &batch, 1.0, only_l1(PixelTarget::RoundTrip)).unwrap();
    assert!(
        (round_trip - l1).abs() > 1e-3,
        "the two targets agree: {round_trip}"
    );
}
