//! The building blocks against naive references.

use candle_core::{D, Device, Tensor};
use zlayer_model::layers::{apply_rope, layer_norm, rms_norm, rope, timestep_embedding};
use zlayer_model::sampling::noise;

fn vec4(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn rope_rotates_each_pair_by_position_times_frequency() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let axes = [2, 2, 4]; // head dim 8: 1 + 1 + 2 frequency pairs
    let ids = Tensor::new(&[[[0f32, 3.0, 5.0], [1.0, 2.0, 7.0]]], &dev)?; // (1, 2, 3)
    let (cos, sin) = rope(&ids, &axes, 10_000.0)?;
    let x = noise((1, 1, 2, 8), 1, &dev)?;
    let y = vec4(&apply_rope(&x, &cos, &sin)?);
    let xv = vec4(&x);
    for l in 0..2 {
        let pos = [[0.0, 3.0, 5.0], [1.0, 2.0, 7.0]][l];
        // Pair k: its axis and frequency 1 / θ^(2j/d) within that axis.
        let mut k = 0;
        for (a, &d) in axes.iter().enumerate() {
            for j in 0..d / 2 {
                let ang = pos[a] / 10_000f64.powf(2.0 * j as f64 / d as f64);
                let (x0, x1) = (xv[l * 8 + 2 * k] as f64, xv[l * 8 + 2 * k + 1] as f64);
                let want = [
                    x0 * ang.cos() - x1 * ang.sin(),
                    x0 * ang.sin() + x1 * ang.cos(),
                ];
                for c in 0..2 {
                    assert!(
                        (y[l * 8 + 2 * k + c] as f64 - want[c]).abs() < 1e-5,
                        "token {l} pair {k}"
                    );
                }
                k += 1;
            }
        }
    }
    Ok(())
}

#[test]
fn norms_match_their_formulas() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1f32, 2.0, 3.0, 6.0]], &dev)?;
    let scale = Tensor::new(&[1f32, 1.0, 2.0, 1.0], &dev)?;
    // rms = sqrt((1 + 4 + 9 + 36) / 4) = sqrt(12.5)
    let r = vec4(&rms_norm(&x, &scale, 0.0)?);
    let rms = 12.5f32.sqrt();
    assert!((r[2] - 6.0 / rms).abs() < 1e-6 && (r[3] - 6.0 / rms).abs() < 1e-6);
    // mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
    let n = vec4(&layer_norm(&x)?);
    assert!((n[0] + 2.0 / (3.5f32 + 1e-6).sqrt()).abs() < 1e-5);
    assert!(layer_norm(&x)?.sum(D::Minus1)?.to_vec1::<f32>()?[0].abs() < 1e-5);
    Ok(())
}

#[test]
fn timestep_embedding_is_cos_then_sin_of_scaled_time() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let e = vec4(&timestep_embedding(&Tensor::new(&[0.25f32], &dev)?, 8)?);
    for k in 0..4 {
        let arg = 250.0 * (-(10_000f64.ln()) * k as f64 / 4.0).exp();
        assert!(
            (e[k] as f64 - arg.cos()).abs() < 1e-4 && (e[4 + k] as f64 - arg.sin()).abs() < 1e-4,
            "k={k}"
        );
    }
    Ok(())
}
