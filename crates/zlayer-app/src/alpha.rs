//! The alpha-aware VAE's data and evaluation (DESIGN.md §4.5): SA-Z-synth's opaque images
//! and exact amodal RGBA layers as tensors, and held-out scores: RGB PSNR of opaque images
//! beside the RGB VAE's, RGB PSNR of the layers' opaque pixels, and alpha SAD/MSE/Grad.

use crate::data::scenes;
use candle_core::{Device, Result, Tensor};
use zlayer_metrics::matting::{Region, matting};
use zlayer_model::vae::Vae;
use zlayer_synth::{Split, SynthScene};

/// Which sample of a batch is which: even ones are whole images, odd ones layers.
fn is_layer(k: u64) -> bool {
    k % 2 == 1
}

/// The rows of the batch of samples `first..first + n` that are whole opaque images.
pub fn opaque_rows(first: usize, n: usize) -> Vec<u32> {
    (0..n as u32)
        .filter(|&i| !is_layer(first as u64 + i as u64))
        .collect()
}

/// One sample as planar RGBA in [−1, 1]: sample `k` of the run is the whole image of its
/// scene (alpha 1) when `k` is even, else the amodal RGBA layer of one of its instances
/// (chosen by `k`), straight alpha.
fn sample(s: &SynthScene, k: u64) -> Vec<f32> {
    let n = s.image.len();
    let mut v = vec![0f32; 4 * n];
    let unit = |b: u8| b as f32 / 127.5 - 1.0;
    if is_layer(k) && !s.layers.is_empty() {
        let layer = &s.layers[(k / 2) as usize % s.layers.len()];
        for (p, px) in layer.iter().enumerate() {
            for c in 0..4 {
                v[c * n + p] = unit(px.0[c]);
            }
        }
    } else {
        for (p, px) in s.image.iter().enumerate() {
            for c in 0..3 {
                v[c * n + p] = unit(px[c]);
            }
            v[3 * n + p] = 1.0;
        }
    }
    v
}

/// Samples `first..first + n` of `seed` (N, 4, S, S), all splits in turn.
pub fn batch(seed: u64, first: u64, n: usize, size: u32, dev: &Device) -> Result<Tensor> {
    let sc = scenes(seed, first, n, size, &Split::ALL);
    let data: Vec<f32> = sc
        .iter()
        .enumerate()
        .flat_map(|(i, s)| sample(s, first + i as u64))
        .collect();
    Tensor::from_vec(data, (n, 4, size as usize, size as usize), dev)
}

/// Held-out scores of an RGBA VAE.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AlphaScores {
    /// Whole opaque images: RGB PSNR (dB) of the RGBA VAE's round trip.
    pub opaque_psnr: f64,
    /// The same images through the RGB VAE it started from.
    pub rgb_vae_psnr: Option<f64>,
    /// Layers: RGB PSNR (dB) over the pixels whose true alpha is 1.
    pub layer_opaque_psnr: f64,
    /// Layers: mean alpha SAD (/1000, whole image).
    pub alpha_sad: f64,
    /// Layers: mean alpha MSE.
    pub alpha_mse: f64,
    /// Layers: mean alpha gradient error (/1000).
    pub alpha_grad: f64,
    /// Layers scored.
    pub layers: usize,
}

fn psnr_of(se: f64, count: f64) -> f64 {
    10.0 * (count.max(1.0) / se.max(1e-12)).log10()
}

/// Scores `vae` (and the RGB VAE `rgb` on the opaque images) on `n` held-out scenes of
/// `seed`: each scene's whole image, and each instance's amodal layer.
pub fn evaluate(
    vae: &Vae,
    rgb: Option<&Vae>,
    seed: u64,
    n: usize,
    size: u32,
    dev: &Device,
) -> Result<AlphaScores> {
    let sc = scenes(seed, 0, n, size, &Split::ALL);
    let s = size as usize;
    let px = s * s;
    let round_trip = |v: &Vae, x: &Tensor| v.decode(&v.encode(x)?)?.clamp(-1.0, 1.0);
    let opaque: Vec<f32> = sc.iter().flat_map(|s| sample(s, 0)).collect();
    let x = Tensor::from_vec(opaque, (n, 4, s, s), dev)?;
    let rgb_err = |a: &Tensor, b: &Tensor| -> Result<f64> {
        let d = ((a.narrow(1, 0, 3)? - b.narrow(1, 0, 3)?)? * 0.5)?;
        Ok(d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64)
    };
    let count = (n * 3 * px) as f64;
    let opaque_psnr = psnr_of(rgb_err(&round_trip(vae, &x)?, &x)?, count);
    let rgb_vae_psnr = rgb
        .map(|r| -> Result<f64> {
            let x3 = x.narrow(1, 0, 3)?;
            let d = ((round_trip(r, &x3)? - &x3)? * 0.5)?;
            Ok(psnr_of(
                d.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
                count,
            ))
        })
        .transpose()?;
    let (mut se, mut opaque_px, mut sad, mut mse, mut grad, mut layers) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0);
    for scene in &sc {
        for layer in &scene.layers {
            let v: Vec<f32> = (0..4)
                .flat_map(|c| layer.iter().map(move |p| p.0[c] as f32 / 127.5 - 1.0))
                .collect();
            let t = Tensor::from_vec(v.clone(), (1, 4, s, s), dev)?;
            let out: Vec<f32> = round_trip(vae, &t)?.flatten_all()?.to_vec1()?;
            let alpha = |v: &[f32]| -> Vec<f64> {
                v[3 * px..]
                    .iter()
                    .map(|&a| (a as f64 + 1.0) / 2.0)
                    .collect()
            };
            let (pa, ta) = (alpha(&out), alpha(&v));
            for p in (0..px).filter(|&p| ta[p] >= 1.0) {
                for c in 0..3 {
                    se += ((out[c * px + p] - v[c * px + p]) as f64 / 2.0).powi(2);
                }
                opaque_px += 3.0;
            }
            let m = matting(&pa, &ta, s, s, Region::Whole);
            (sad, mse, grad) = (sad + m.sad, mse + m.mse, grad + m.grad);
            layers += 1;
        }
    }
    let per = layers.max(1) as f64;
    Ok(AlphaScores {
        opaque_psnr,
        rgb_vae_psnr,
        layer_opaque_psnr: psnr_of(se, opaque_px),
        alpha_sad: sad / per,
        alpha_mse: mse / per,
        alpha_grad: grad / per,
        layers,
    })
}
