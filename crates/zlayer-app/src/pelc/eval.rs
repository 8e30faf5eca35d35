//! `zlayer eval-pelc`: three ways to blend two latents under a mask, scored against the
//! composite of their decoded images, x* = (1 − m)·D(z_A) + m·D(z_B), on held-out pairs:
//!
//! - `linear`: (1 − m↓)·z_A + m↓·z_B with the area-downsampled mask (diffusers, ComfyUI);
//! - `decformer`: the trained DecFormer;
//! - `pixel`: decode both, composite, encode again (the ceiling: its error is the VAE's own
//!   round trip, at the cost of two decodes and an encode);
//! - `oracle` (on request): the pixel ceiling's latent moved by Adam on the L1 of its decoded
//!   image against x* itself, an estimate of the best any latent can decode to, and so of
//!   the room a latent blend has above the ceiling.
//!
//! Each is decoded and compared with x*: per-pixel error (mean over channels, in [0, 1])
//! against signed distance to the mask edge (m ≥ ½), its mean within 2 px of the edge (halo
//! L1) and within 8 px (edge L1), and whole-image PSNR and SSIM. Halo and edge L1 are also
//! given per mask kind, and against x_T = D(E(x*)), the VAE's own rendering of the
//! composite and DecFormer's training target: against it the ceiling's error is zero, so the
//! linear blend's error there is all a latent blend can remove. Times are of producing the
//! blended latent, per pair, beside one forward of the tiny DiT at batch 1.

use super::{MASK_KINDS, Pair, decode, decoded_composite, encode, tensors};
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

/// Half-width of the halo band, in pixels.
pub const HALO_PX: f64 = 2.0;

/// Half-width of the edge band, in pixels (the paper's "within 8 px of the edge").
pub const EDGE_PX: f64 = 8.0;

/// Halo and edge L1 of one mask kind (or all), against x* and against x_T.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Bands {
    /// Mean error within [`HALO_PX`] of the edge, against x*.
    pub halo_l1: f64,
    /// Mean error within [`EDGE_PX`] of the edge, against x*.
    pub edge_l1: f64,
    /// The same as `halo_l1`, against x_T = D(E(x*)).
    pub halo_l1_target: f64,
    /// The same as `edge_l1`, against x_T.
    pub edge_l1_target: f64,
}

/// Sums behind [`Bands`]: (total, images) for each of its four figures.
#[derive(Default, Clone, Copy)]
struct BandSums([(f64, usize); 4]);

impl BandSums {
    fn add(&mut self, k: usize, v: Option<f64>) {
        if let Some(v) = v {
            self.0[k].0 += v;
            self.0[k].1 += 1;
        }
    }

    fn bands(&self) -> Bands {
        let m = |k: usize| self.0[k].0 / self.0[k].1.max(1) as f64;
        Bands {
            halo_l1: m(0),
            edge_l1: m(1),
            halo_l1_target: m(2),
            edge_l1_target: m(3),
        }
    }
}

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
    /// Halo and edge L1 of all pairs, against x* and x_T.
    pub bands: Bands,
    /// The same per mask kind, in [`MASK_KINDS`] order.
    pub by_kind: Vec<(&'static str, Bands)>,
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
    bands: BandSums,
    kinds: [BandSums; 4],
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
            bands: BandSums::default(),
            kinds: [BandSums::default(); 4],
            l1: 0.0,
            hist: DistanceHistogram::new(CURVE_MAX),
            seconds: 0.0,
            n: 0,
        }
    }

    fn add(
        &mut self,
        got: &[[f32; 3]],
        want: &[[f32; 3]],
        target: &[[f32; 3]],
        pair: &Pair,
        size: usize,
    ) {
        let err = |want: &[[f32; 3]]| -> Vec<f64> {
            got.iter()
                .zip(want)
                .map(|(p, q)| (0..3).map(|c| (p[c] - q[c]).abs() as f64).sum::<f64>() / 3.0)
                .collect()
        };
        let (err, err_t) = (err(want), err(target));
        let inside: Vec<bool> = pair.mask.iter().map(|&m| m >= 0.5).collect();
        let band = |e: &[f64], px: f64| halo_l1(e, &inside, size, size, px);
        for (k, v) in [
            band(&err, HALO_PX),
            band(&err, EDGE_PX),
            band(&err_t, HALO_PX),
            band(&err_t, EDGE_PX),
        ]
        .into_iter()
        .enumerate()
        {
            self.bands.add(k, v);
            self.kinds[pair.kind].add(k, v);
        }
        for b in error_by_distance(&err, &inside, size, size, CURVE_MAX) {
            self.hist
                .add(b.distance, b.mean_error * b.count as f64, b.count);
        }
        if let Some(h) = band(&err, HALO_PX) {
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
            bands: self.bands.bands(),
            by_kind: MASK_KINDS
                .iter()
                .zip(&self.kinds)
                .map(|(&k, b)| (k, b.bands()))
                .collect(),
            l1: self.l1 / n,
            curve: self.hist.bins(),
            ms_per_pair: 1000.0 * self.seconds / n,
        }
    }
}

/// One pair as pictures (8-bit RGB, `size²`), by column name: the inputs, the mask, x*,
/// each method's decoded blend and, but for the ceiling's, its error against x* (×4).
pub type Panels = Vec<(String, Vec<[u8; 3]>)>;

/// Scores the methods on `pairs` (DecFormer's only when `dec` is given, the oracle's only
/// with `oracle_steps` > 0), in batches of 8, and shows the first `show` pairs.
pub fn evaluate(
    vae: &VaeBundle,
    dec: Option<&DecFormer>,
    pairs: &[Pair],
    (size, show, oracle_steps): (usize, usize, usize),
    dev: &Device,
) -> std::result::Result<(Vec<MethodScore>, Vec<Panels>), Failure> {
    let mut accs = vec![Acc::new("linear"), Acc::new("pixel")];
    if dec.is_some() {
        accs.insert(1, Acc::new("decformer"));
    }
    if oracle_steps > 0 {
        accs.push(Acc::new("oracle"));
    }
    let mut shown = Vec::new();
    for chunk in pairs.chunks(8) {
        let wanted = show.saturating_sub(shown.len()).min(chunk.len());
        let shape = (size, wanted, oracle_steps);
        let panels = batch(vae, dec, chunk, shape, dev, &mut accs).map_err(internal)?;
        shown.extend(panels);
    }
    Ok((accs.into_iter().map(Acc::finish).collect(), shown))
}

fn to8(px: &[[f32; 3]]) -> Vec<[u8; 3]> {
    px.iter()
        .map(|p| p.map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8))
        .collect()
}

/// |got − want| per channel, ×4, as a picture.
fn difference(got: &[[f32; 3]], want: &[[f32; 3]]) -> Vec<[u8; 3]> {
    let d: Vec<[f32; 3]> = got
        .iter()
        .zip(want)
        .map(|(g, w)| [0, 1, 2].map(|c| ((g[c] - w[c]).abs() * 4.0).min(1.0)))
        .collect();
    to8(&d)
}

/// Adds one batch of pairs to every method's scores.
fn batch(
    vae: &VaeBundle,
    dec: Option<&DecFormer>,
    chunk: &[Pair],
    (size, show, oracle_steps): (usize, usize, usize),
    dev: &Device,
    accs: &mut [Acc],
) -> Result<Vec<Panels>> {
    let [a, b, _, m] = tensors(chunk, size, dev)?;
    let (za, zb) = (encode(vae, &a)?, encode(vae, &b)?);
    let x_star = decoded_composite(vae, &za, &zb, &m)?;
    let want = rgb(&x_star)?;
    let target = rgb(&decode(vae, &encode(vae, &x_star)?)?)?;
    let mut panels: Vec<Panels> = chunk[..show]
        .iter()
        .zip(&want)
        .map(|(p, w)| {
            let grey: Vec<[u8; 3]> = p
                .mask
                .iter()
                .map(|&m| [(m * 255.0).round() as u8; 3])
                .collect();
            vec![
                ("A".into(), p.a.clone()),
                ("B".into(), p.b.clone()),
                (format!("mask ({})", MASK_KINDS[p.kind]), grey),
                ("x*".into(), to8(w)),
            ]
        })
        .collect();
    for acc in accs.iter_mut() {
        let t = Instant::now();
        let z = match (acc.method, dec) {
            ("decformer", Some(d)) => d.forward(&za, &zb, &m, 1.0)?.z,
            // The ceiling pays for its own decodes.
            ("pixel", _) => encode(vae, &decoded_composite(vae, &za, &zb, &m)?)?,
            ("oracle", _) => oracle(vae, &x_star, oracle_steps)?,
            _ => DecFormer::linear_blend(&za, &zb, &m, vae.cfg.factor())?,
        };
        acc.seconds += t.elapsed().as_secs_f64();
        let got = rgb(&decode(vae, &z)?)?;
        for (k, p) in chunk.iter().enumerate() {
            acc.add(&got[k], &want[k], &target[k], p, size);
        }
        for (k, shown) in panels.iter_mut().enumerate() {
            shown.push((acc.method.into(), to8(&got[k])));
            if !matches!(acc.method, "pixel" | "oracle") {
                // The bitmap font is ASCII, and a column is 16 characters wide.
                shown.push(("|err| x4".into(), difference(&got[k], &want[k])));
            }
        }
    }
    Ok(panels)
}

/// The latent whose decoding is nearest `x_star` in L1 that `steps` of Adam find, from the
/// pixel ceiling's E(x*). Each image's latent moves on its own gradient: Adam's step is
/// per element, so batching them changes nothing.
fn oracle(vae: &VaeBundle, x_star: &Tensor, steps: usize) -> Result<Tensor> {
    use candle_nn::Optimizer;
    let z = candle_core::Var::from_tensor(&encode(vae, x_star)?)?;
    let params = candle_nn::ParamsAdamW {
        lr: ORACLE_LR,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = candle_nn::AdamW::new(vec![z.clone()], params)?;
    for _ in 0..steps {
        let loss = (decode(vae, z.as_tensor())? - x_star)?.abs()?.mean_all()?;
        opt.backward_step(&loss)?;
    }
    Ok(z.as_tensor().detach())
}

/// The oracle's Adam step on normalised latents (unit scale): 0.01 moves a latent by about
/// a tenth of its spread in ten steps, and a few hundred steps settle.
const ORACLE_LR: f64 = 0.01;

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
