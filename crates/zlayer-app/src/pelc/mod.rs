//! Latent compositing data and training (DESIGN.md §4.4): pairs of SA-Z-synth images with
//! a mask, their pixel composite, and `zlayer train pelc`, which fits DecFormer so that its
//! blend of the two latents decodes like the composite.
//!
//! Masks come in four kinds, cycling by pair index: an instance's anti-aliased amodal mask,
//! the same thresholded hard, the hard mask Gaussian-blurred (σ from 0.5 to 2.5 px at 64 px,
//! the paper's soft masks scaled to our size), and thin anti-aliased strokes (1 to 3 px wide).
//! The target is z_T = E(composite); the loss reads it in latents and, through the frozen
//! decoder, in pixels: λ_E·‖ẑ − z_T‖² + halo-weighted L1 + λ_G·L1 of the pixel gradients.
//! No pretrained LPIPS network is reachable here, so the gradient term stands in for it.

pub mod eval;

use crate::Failure;
use candle_core::{DType, Device, Result, Tensor};
use zlayer_model::bundle::{Source, VaeBundle};
use zlayer_model::pelc::{DecConfig, DecFormer};
use zlayer_model::vae::VaeConfig;
use zlayer_synth::{Params, Split, scene_at};

/// The kinds of mask, in the order pairs cycle through them.
pub const MASK_KINDS: [&str; 4] = ["instance", "hard", "soft", "stroke"];

/// One training or evaluation pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The image under the mask's zeros (RGB, row-major).
    pub a: Vec<[u8; 3]>,
    /// The image under its ones.
    pub b: Vec<[u8; 3]>,
    /// The mask in [0, 1], row-major.
    pub mask: Vec<f32>,
    /// Which of [`MASK_KINDS`] it is.
    pub kind: usize,
}

impl Pair {
    /// The pixel composite `(1 − m)·a + m·b`, in [0, 1] per channel.
    pub fn composite(&self) -> Vec<[f32; 3]> {
        self.a
            .iter()
            .zip(&self.b)
            .zip(&self.mask)
            .map(|((a, b), &m)| {
                [0, 1, 2].map(|c| ((1.0 - m) * a[c] as f32 + m * b[c] as f32) / 255.0)
            })
            .collect()
    }
}

/// A separable Gaussian blur of a `s × s` plane (edges clamped).
fn blur(plane: &[f32], s: usize, sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        (0..s * s)
            .map(|i| {
                let (x, y) = ((i % s) as i64, (i / s) as i64);
                (-r..=r)
                    .zip(&k)
                    .map(|(d, w)| {
                        let (xx, yy) = if horizontal { (x + d, y) } else { (x, y + d) };
                        let (xx, yy) = (xx.clamp(0, s as i64 - 1), yy.clamp(0, s as i64 - 1));
                        w * src[yy as usize * s + xx as usize]
                    })
                    .sum::<f32>()
                    / sum
            })
            .collect()
    };
    pass(&pass(plane, true), false)
}

/// Anti-aliased strokes: `n` segments of width `w` between random points.
fn strokes(s: usize, rng: &mut zlayer_scene::rng::Rng) -> Vec<f32> {
    let n = 1 + (rng.next_u64() % 3) as usize;
    let segs: Vec<([f32; 4], f32)> = (0..n)
        .map(|_| {
            let p = [0; 4].map(|_| rng.f32() * s as f32);
            (p, 1.0 + 2.0 * rng.f32())
        })
        .collect();
    (0..s * s)
        .map(|i| {
            let (x, y) = ((i % s) as f32 + 0.5, (i / s) as f32 + 0.5);
            segs.iter()
                .map(|([x0, y0, x1, y1], w)| {
                    let (dx, dy) = (x1 - x0, y1 - y0);
                    let t = (((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy).max(1e-6))
                        .clamp(0.0, 1.0);
                    let d = ((x - x0 - t * dx).powi(2) + (y - y0 - t * dy).powi(2)).sqrt();
                    (w / 2.0 + 0.5 - d).clamp(0.0, 1.0)
                })
                .fold(0.0, f32::max)
        })
        .collect()
}

/// Pair `index` of data seed `seed` at side `size`: two scenes of the cycling splits and a
/// mask of kind `index % 4`, instance masks taken from the second scene.
pub fn pair(seed: u64, index: u64, size: u32) -> Pair {
    let splits = [Split::Simple, Split::Regular, Split::Complex];
    let at = |k: u64| scene_at(seed, k, &Params::new(splits[(k % 3) as usize], size));
    let (a, b) = (at(2 * index), at(2 * index + 1));
    let mut rng = zlayer_scene::rng::Rng::new(seed ^ index.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let s = size as usize;
    let kind = (index % 4) as usize;
    let pick = rng.next_u64();
    let instance = || -> Vec<f32> {
        if b.amodal.is_empty() {
            return vec![0.0; s * s];
        }
        let k = (pick % b.amodal.len() as u64) as usize;
        b.amodal[k].iter().map(|&v| v as f32 / 255.0).collect()
    };
    let mask = match kind {
        0 => instance(),
        1 => instance()
            .into_iter()
            .map(|v| f32::from(u8::from(v >= 0.5)))
            .collect(),
        2 => {
            let hard: Vec<f32> = instance()
                .into_iter()
                .map(|v| f32::from(u8::from(v >= 0.5)))
                .collect();
            let sigma = 0.5 + 2.0 * rng.f32();
            blur(&hard, s, sigma)
        }
        _ => strokes(s, &mut rng),
    };
    Pair {
        a: a.image,
        b: b.image,
        mask,
        kind,
    }
}

/// Normalised latents (B, C, h, w) of images (B, 3, S, S) in [−1, 1].
pub fn encode(vae: &VaeBundle, x: &Tensor) -> Result<Tensor> {
    vae.vae
        .encode(x)?
        .detach()
        .affine(vae.scale, -vae.shift * vae.scale)
}

/// Images (B, 3, S, S) in [−1, 1] of normalised latents.
pub fn decode(vae: &VaeBundle, z: &Tensor) -> Result<Tensor> {
    vae.vae.decode(&z.affine(1.0 / vae.scale, vae.shift)?)
}

/// A batch as tensors: (A, B, composite) each (N, 3, S, S) in [−1, 1], masks (N, 1, S, S).
pub fn tensors(pairs: &[Pair], size: usize, dev: &Device) -> Result<[Tensor; 4]> {
    let n = pairs.len();
    let planar = |f: &dyn Fn(&Pair, usize, usize) -> f32| -> Result<Tensor> {
        let v: Vec<f32> = pairs
            .iter()
            .flat_map(|p| (0..3).flat_map(move |c| (0..size * size).map(move |i| f(p, c, i))))
            .collect();
        Tensor::from_vec(v, (n, 3, size, size), dev)
    };
    let a = planar(&|p, c, i| p.a[i][c] as f32 / 127.5 - 1.0)?;
    let b = planar(&|p, c, i| p.b[i][c] as f32 / 127.5 - 1.0)?;
    let comps: Vec<Vec<[f32; 3]>> = pairs.iter().map(Pair::composite).collect();
    let v: Vec<f32> = comps
        .iter()
        .flat_map(|x| (0..3).flat_map(move |c| x.iter().map(move |p| p[c] * 2.0 - 1.0)))
        .collect();
    let x = Tensor::from_vec(v, (n, 3, size, size), dev)?;
    let m: Vec<f32> = pairs.iter().flat_map(|p| p.mask.iter().copied()).collect();
    Ok([a, b, x, Tensor::from_vec(m, (n, 1, size, size), dev)?])
}

/// The loss weights, and what the decoded blend is compared with.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LossWeights {
    /// λ_E on the latent MSE.
    pub latent: f64,
    /// Extra weight of the halo band in the pixel L1 (1 + this inside the band).
    pub halo: f64,
    /// λ_G on the L1 of pixel gradients (in place of LPIPS).
    pub gradient: f64,
    /// The pixel target (runs before it existed used the round trip).
    #[serde(default)]
    pub target: PixelTarget,
}

/// What DecFormer's decoded blend is trained to match.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelTarget {
    /// x_T = D(E(x)), the VAE's rendering of the composite x of the two images (DESIGN.md
    /// §4.4): reachable by some latent, so the VAE's own error cancels.
    #[default]
    RoundTrip,
    /// x* = (1 − m)·D(z_A) + m·D(z_B), the composite of the decoded inputs, which
    /// decoder-equivalence asks for and `eval-pelc` scores against; the latent target is E(x*).
    Composite,
}

impl std::str::FromStr for PixelTarget {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "round-trip" => Ok(Self::RoundTrip),
            "composite" => Ok(Self::Composite),
            _ => Err(format!(
                "{s:?}: the pixel target is round-trip or composite"
            )),
        }
    }
}

/// x* = (1 − m)·D(z_A) + m·D(z_B): the pixel composite of two decoded latents.
pub fn decoded_composite(vae: &VaeBundle, za: &Tensor, zb: &Tensor, m: &Tensor) -> Result<Tensor> {
    pixel_composite(&decode(vae, za)?, &decode(vae, zb)?, m)
}

/// (1 − m)·x_A + m·x_B for images (B, C, H, W) and a mask (B, 1, H, W).
pub fn pixel_composite(xa: &Tensor, xb: &Tensor, m: &Tensor) -> Result<Tensor> {
    let mb = m.broadcast_as(xa.shape())?;
    (xa * (1.0 - &mb)?)? + (xb * &mb)?
}

/// Mean |∂x/∂x| + |∂x/∂y| differences between two images (B, 3, H, W).
fn gradient_l1(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (h, w) = (x.dim(2)?, x.dim(3)?);
    let dx = |t: &Tensor| t.narrow(3, 1, w - 1)? - t.narrow(3, 0, w - 1)?;
    let dy = |t: &Tensor| t.narrow(2, 1, h - 1)? - t.narrow(2, 0, h - 1)?;
    let gx = (dx(x)? - dx(y)?)?.abs()?.mean_all()?;
    let gy = (dy(x)? - dy(y)?)?.abs()?.mean_all()?;
    gx + gy
}

/// `(total, latent MSE, halo-weighted pixel L1, gradient L1)` of DecFormer on one batch,
/// with its residual scaled by `gate`.
pub fn loss(
    dec: &DecFormer,
    vae: &VaeBundle,
    [a, b, x, m]: &[Tensor; 4],
    gate: f64,
    w: LossWeights,
) -> Result<(Tensor, [f32; 3])> {
    let (za, zb) = (encode(vae, a)?, encode(vae, b)?);
    let (zt, target) = match w.target {
        PixelTarget::RoundTrip => {
            let zt = encode(vae, x)?;
            let target = decode(vae, &zt)?;
            (zt, target)
        }
        PixelTarget::Composite => {
            let target = decoded_composite(vae, &za, &zb, m)?;
            (encode(vae, &target)?, target)
        }
    };
    let target = target.detach();
    let out = dec.forward(&za, &zb, m, gate)?;
    let latent = (&out.z - &zt)?.sqr()?.mean_all()?;
    let pixels = decode(vae, &out.z)?;
    let weight = ((dec.halo_band(m)? * w.halo)? + 1.0)?;
    let l1 = (&pixels - &target)?
        .abs()?
        .broadcast_mul(&weight)?
        .mean_all()?;
    let grad = gradient_l1(&pixels, &target)?;
    let total = ((&latent * w.latent)? + &l1 + (&grad * w.gradient)?)?;
    let s = |t: &Tensor| t.to_dtype(DType::F32)?.to_scalar::<f32>();
    Ok((total, [s(&latent)?, s(&l1)?, s(&grad)?]))
}

/// The residual gate at `step`: 0 for the first `alpha_steps`, then up linearly to 1 over
/// `warmup` steps.
pub fn gate(step: usize, alpha_steps: usize, warmup: usize) -> f64 {
    if step < alpha_steps {
        return 0.0;
    }
    ((step - alpha_steps + 1) as f64 / warmup.max(1) as f64).min(1.0)
}

/// A trained DecFormer from `pelc.safetensors` and the `pelc.json` beside it (its config
/// and how it was trained), or the bundled one, in f32.
pub fn load(
    src: &Source,
    dev: &Device,
) -> std::result::Result<(DecFormer, serde_json::Value), Failure> {
    let user = |e: String| Failure::User(format!("{}: {e}", src.name()));
    let (cfg, meta) = config_of(src)?;
    let vb = src.weights(dev).map_err(user)?;
    let dec = DecFormer::new(&cfg, vb.set_dtype(DType::F32)).map_err(|e| user(e.to_string()))?;
    Ok((dec, meta))
}

/// A trained DecFormer's config, and the whole JSON it sits in.
pub fn config_of(src: &Source) -> std::result::Result<(DecConfig, serde_json::Value), Failure> {
    let meta = src.json().map_err(Failure::User)?;
    let cfg = serde_json::from_value(meta["config"].clone())
        .map_err(|e| Failure::User(format!("{}: config: {e}", src.json_name())))?;
    Ok((cfg, meta))
}

/// Whether a DecFormer of `cfg` blends the latents of the VAE `vae`; if not, a sentence that
/// says both shapes.
pub fn fits(cfg: &DecConfig, vae: &VaeConfig) -> std::result::Result<(), String> {
    if (cfg.latent, cfg.factor) == (vae.latent, vae.factor()) {
        return Ok(());
    }
    Err(format!(
        "the DecFormer blends {}-channel latents at {}×; this VAE makes {}-channel latents at {}×",
        cfg.latent,
        cfg.factor,
        vae.latent,
        vae.factor()
    ))
}

/// Errors of the data side, as the front ends report them.
pub fn check_size(size: usize, factor: usize) -> std::result::Result<(), Failure> {
    if size == 0 || !size.is_multiple_of(factor) {
        return Err(Failure::User(format!(
            "image size {size}: a multiple of the VAE's factor {factor} is needed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_seeded_cycle_their_masks_and_composite_exactly() {
        let p = pair(3, 6, 64);
        assert_eq!(p.kind, 2);
        let again = pair(3, 6, 64);
        assert_eq!((p.a == again.a, p.mask == again.mask), (true, true));
        let kinds: Vec<usize> = (0..8).map(|i| pair(3, i, 64).kind).collect();
        assert_eq!(kinds, [0, 1, 2, 3, 0, 1, 2, 3]);
        for i in 0..8 {
            let p = pair(3, i, 64);
            assert!(
                p.mask.iter().all(|v| (0.0..=1.0).contains(v)),
                "kind {}",
                p.kind
            );
            for (k, px) in p.composite().iter().enumerate() {
                let m = p.mask[k];
                for (ch, &got) in px.iter().enumerate() {
                    let want = ((1.0 - m) * p.a[k][ch] as f32 + m * p.b[k][ch] as f32) / 255.0;
                    assert!((got - want).abs() < 1e-6);
                }
            }
        }
        // A hard mask is binary; a soft one has in-between values; a stroke is thin.
        assert!(pair(3, 1, 64).mask.iter().all(|&v| v == 0.0 || v == 1.0));
        assert!(pair(3, 2, 64).mask.iter().any(|&v| v > 0.05 && v < 0.95));
        let stroke = pair(3, 3, 64).mask;
        let covered = stroke.iter().filter(|&&v| v > 0.0).count();
        assert!(covered > 20 && covered < 64 * 64 / 4, "{covered} px");
    }

    #[test]
    fn the_gate_holds_then_warms_up() {
        assert_eq!(gate(0, 10, 4), 0.0);
        assert_eq!(gate(9, 10, 4), 0.0);
        assert_eq!(gate(10, 10, 4), 0.25);
        assert_eq!(gate(13, 10, 4), 1.0);
        assert_eq!(gate(100, 10, 4), 1.0);
    }

    #[test]
    fn a_blur_keeps_the_mass_and_softens_the_edge() {
        let s = 16;
        let hard: Vec<f32> = (0..s * s).map(|i| f32::from(u8::from(i % s < 8))).collect();
        let soft = blur(&hard, s, 1.5);
        let (a, b): (f32, f32) = (hard.iter().sum(), soft.iter().sum());
        assert!((a - b).abs() < 1e-3 * a, "{a} {b}");
        assert!(soft[7] < 1.0 && soft[8] > 0.0 && (soft[7] + soft[8] - 1.0).abs() < 1e-4);
    }
}
