//! `zlayer eval-pelc`: three ways to blend two latents under a mask, scored against the
//! composite of their decoded images, x* = (1 − m)·D(z_A) + m·D(z_B), on held-out pairs:
//!
//! - `linear`: (1 − m↓)·z_A + m↓·z_B with the area-downsampled mask (diffusers, ComfyUI);
//! - `decformer`: the trained DecFormer;
//! - `pixel`: decode both, composite, encode again (the ceiling: its error is the VAE's own
//!   round trip, at the cost of two decodes and an encode).
//!
//! Each is decoded and compared with x*: per-pixel error (mean over channels, in [0, 1])
//! against signed distance to the mask edge (m ≥ ½), its mean within 2 px of the edge (halo
//! L1), and whole-image PSNR and SSIM. Times are of producing the blended latent, per pair,
//! beside one forward of the tiny DiT at batch 1.

use super::{Pair, decode, encode, tensors};
use crate::Failure;
use crate::internal;
use candle_core::{Device, Result, Tensor};
use std::time::Instant;
use zlayer_metrics::boundary::{DistanceBin, DistanceHistogram, error_by_distance, halo_l1};
use zlayer_metrics::fidelity::{psnr, ssim};
use zlayer_model::bundle::VaeBundle;
use zlayer_model::pelc::DecFormer;

/// Largest |signed distance| the curve bins.
pub const CURVE_MAX: i32 = 16;

/// One method's scores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodScore {
    /// `linear`, `decformer` or `pixel`.
    pub method: &'static str,
    /// Mean PSNR (dB) against x*.
    pub psnr: f64,
    /// Mean SSIM against x*.
    pub ssim: f64,
    /// Mean error within 2 px of the mask edge.
    pub halo_l1: f64,
    /// Mean error of the whole image.
    pub l1: f64,
    /// Error against signed distance, pooled over pairs.
    pub curve: Vec<DistanceBin>,
    /// Milliseconds per pair to produce the blended latent.
    pub ms_per_pair: f64,
}

struct Acc {
    method: &'static str,
    psnr: f64,
    ssim: f64,
    halo: (f64, usize),
    l1: f64,
    hist: DistanceHistogram,
    seconds: f64,
    n: usize,
}

fn rgb(images: &Tensor) -> Result<Vec<Vec<[f32; 3]>>> {
    let (b, _, h, w) = images.dims4()?;
    let v: Vec<f32> = images.clamp(-1.0, 1.0)?.flatten_all()?.to_vec1()?;
    Ok((0..b)
        .map(|k| {
            (0..h * w)
                .map(|p| [0, 1, 2].map(|c| (v[(k * 3 + c) * h * w + p] + 1.0) / 2.0))
                .collect()
        })
        .collect())
}

impl Acc {
    fn new(method: &'static str) -> Self {
        Self {
            method,
            psnr: 0.0,
            ssim: 0.0,
            halo: (0.0, 0),
            l1: 0.0,
            hist: DistanceHistogram::new(CURVE_MAX),
            seconds: 0.0,
            n: 0,
        }
    }

    fn add(&mut self, got: &[[f32; 3]], want: &[[f32; 3]], mask: &[f32], size: usize) {
        let err: Vec<f64> = got
            .iter()
            .zip(want)
            .map(|(p, q)| (0..3).map(|c| (p[c] - q[c]).abs() as f64).sum::<f64>() / 3.0)
            .collect();
        let inside: Vec<bool> = mask.iter().map(|&m| m >= 0.5).collect();
        for b in error_by_distance(&err, &inside, size, size, CURVE_MAX) {
            self.hist
                .add(b.distance, b.mean_error * b.count as f64, b.count);
        }
        if let Some(h) = halo_l1(&err, &inside, size, size, 2.0) {
            self.halo.0 += h;
            self.halo.1 += 1;
        }
        self.l1 += err.iter().sum::<f64>() / err.len() as f64;
        self.psnr += psnr(got, want).min(99.0);
        self.ssim += ssim(got, want, size, size);
        self.n += 1;
    }

    fn finish(self) -> MethodScore {
        let n = self.n.max(1) as f64;
        MethodScore {
            method: self.method,
            psnr: self.psnr / n,
            ssim: self.ssim / n,
            halo_l1: self.halo.0 / self.halo.1.max(1) as f64,
            l1: self.l1 / n,
            curve: self.hist.bins(),
            ms_per_pair: 1000.0 * self.seconds / n,
        }
    }
}

/// Scores the methods on `pairs` (DecFormer's only when `dec` is given), in batches of 8.
pub fn evaluate(
    vae: &VaeBundle,
    dec: Option<&DecFormer>,
    pairs: &[Pair],
    size: usize,
    dev: &Device,
) -> std::result::Result<Vec<MethodScore>, Failure> {
    let mut accs = vec![Acc::new("linear"), Acc::new("pixel")];
    if dec.is_some() {
        accs.insert(1, Acc::new("decformer"));
    }
    for chunk in pairs.chunks(8) {
        batch(vae, dec, chunk, size, dev, &mut accs).map_err(internal)?;
    }
    Ok(accs.into_iter().map(Acc::finish).collect())
}

/// Adds one batch of pairs to every method's scores.
fn batch(
    vae: &VaeBundle,
    dec: Option<&DecFormer>,
    chunk: &[Pair],
    size: usize,
    dev: &Device,
    accs: &mut [Acc],
) -> Result<()> {
    let [a, b, _, m] = tensors(chunk, size, dev)?;
    let (za, zb) = (encode(vae, &a)?, encode(vae, &b)?);
    let composite = |za: &Tensor, zb: &Tensor| -> Result<Tensor> {
        let (xa, xb) = (decode(vae, za)?, decode(vae, zb)?);
        let mb = m.broadcast_as(xa.shape())?;
        (&xa * (1.0 - &mb)?)? + (&xb * &mb)?
    };
    let want = rgb(&composite(&za, &zb)?)?;
    for acc in accs.iter_mut() {
        let t = Instant::now();
        let z = match (acc.method, dec) {
            ("decformer", Some(d)) => d.forward(&za, &zb, &m, 1.0)?.z,
            // The ceiling pays for its own decodes.
            ("pixel", _) => encode(vae, &composite(&za, &zb)?)?,
            _ => DecFormer::linear_blend(&za, &zb, &m, vae.cfg.factor())?,
        };
        acc.seconds += t.elapsed().as_secs_f64();
        let got = rgb(&decode(vae, &z)?)?;
        for (k, p) in chunk.iter().enumerate() {
            acc.add(&got[k], &want[k], &p.mask, size);
        }
    }
    Ok(())
}

/// Milliseconds of one forward of the tiny DiT (random weights: the cost is the shape's) at
/// batch 1, the median of 5, for the cost column.
pub fn dit_step_ms(dev: &Device) -> std::result::Result<f64, Failure> {
    let run = || -> Result<f64> {
        let vm = candle_nn::VarMap::new();
        let (model, _) = zlayer_model::bench::tiny_model(&vm, dev)?;
        let g = zlayer_model::bench::GRID;
        let x = zlayer_model::sampling::noise((1, g * g, model.dit.config().in_channels), 1, dev)?;
        let ids = model
            .tokenizer
            .batch(&[zlayer_model::bench::PROMPT], model.max_len, dev)
            .map_err(candle_core::Error::wrap)?;
        let t = Tensor::full(0.5f32, 1, dev)?;
        let times = (0..6)
            .map(|_| {
                let s = Instant::now();
                model
                    .velocity(&x, &t, &ids, (g, g))
                    .map(|_| s.elapsed().as_secs_f64())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(1000.0 * zlayer_model::bench::median(times[1..].to_vec()))
    };
    run().map_err(internal)
}
