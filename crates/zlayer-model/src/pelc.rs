//! DecFormer, pixel-equivalent latent compositing (DESIGN.md §4.4): given two latents z_A,
//! z_B (B, C, h, w) and a pixel mask m (B, 1, H, W) for B over A, it predicts a per-channel
//! blend α ∈ [0, 1]^{C×h×w} and a residual s so that ẑ = (1 − α)⊙z_A + α⊙z_B + s decodes
//! to the pixel composite, where blending with the area-downsampled mask leaks halos.
//!
//! - **Mask prior**: a CNN on the mask and its halo band (dilation − erosion, `halo_px`
//!   wide) down to latent resolution. It gives α₀ = σ(logit(m↓) + Δ₀), m↓ the area-downsampled
//!   mask, and the features that FiLM and cross-attention read.
//! - **Blocks** at patch sizes `patches` (coarse to fine), each a pre-norm transformer block
//!   over patches of a latent-resolution feature map, with 2D RoPE, per-token FiLM from the
//!   patched mask features, cross-attention to pooled prior tokens in the patch-1 blocks
//!   only, and a residual write back to the feature map.
//! - **Heads**: α = σ(logit(α₀) + Δ), kept in [0, 1] by the sigmoid, and s, scaled by a gate
//!   that training holds at 0 in its first stage and warms up after.
//!
//! Every correction (Δ₀, Δ, FiLM, each block's write-back, s) starts at zero, so a fresh
//! DecFormer is exactly the linear blend with the area-downsampled mask (up to the clamp of
//! m↓ to [1e-4, 1 − 1e-4] before the logit): training starts from the baseline it must beat.

use crate::layers::{apply_rope, attend, gelu, layer_norm, linear, rope};
use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Init, Linear, VarBuilder};

/// DecFormer's shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecConfig {
    /// Latent channels C.
    pub latent: usize,
    /// The VAE's downsampling factor (a power of 2).
    pub factor: usize,
    /// Channels of the mask prior's stride-2 convolutions (one per halving).
    pub prior: Vec<usize>,
    /// Extra 3×3 convolutions at latent resolution after them.
    pub prior_extra: usize,
    /// Width of the latent-resolution feature map.
    pub features: usize,
    /// Transformer width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// Patch size of each block, coarse to fine.
    pub patches: Vec<usize>,
    /// Pooling of the prior features into cross-attention tokens.
    pub cross_pool: usize,
    /// Half-width of the halo band in pixels.
    pub halo_px: usize,
}

impl DecConfig {
    /// For the tiny 4× VAE with 16 latent channels at 64 px.
    pub fn tiny() -> Self {
        Self {
            latent: 16,
            factor: 4,
            prior: vec![16, 32],
            prior_extra: 1,
            features: 32,
            width: 96,
            heads: 4,
            patches: vec![4, 2, 1, 1],
            cross_pool: 2,
            halo_px: 2,
        }
    }

    /// For the FLUX VAE (8×, 16 channels): about 7.7M parameters, as the paper's.
    pub fn flux_dev() -> Self {
        Self {
            latent: 16,
            factor: 8,
            prior: vec![32, 64, 128],
            prior_extra: 4,
            features: 64,
            width: 288,
            heads: 8,
            patches: vec![4, 2, 1, 1],
            cross_pool: 4,
            halo_px: 8,
        }
    }
}

impl DecConfig {
    /// This shape with `blocks` more patch-1 blocks after its own and `features` more
    /// feature channels.
    pub fn grown(&self, blocks: usize, features: usize) -> Self {
        Self {
            patches: [self.patches.clone(), vec![1; blocks]].concat(),
            features: self.features + features,
            ..self.clone()
        }
    }

    /// Multiply-add FLOPs (2 per MAC) of one blend of latents `h × w` (the mask is `factor`
    /// times larger): convolutions, projections, MLPs and attention; element-wise work is
    /// left out, as in [`crate::base::BaseModel::forward_flops`].
    pub fn flops(&self, h: usize, w: usize) -> f64 {
        let (hw, c, f) = ((h * w) as f64, self.latent as f64, self.features as f64);
        let width = self.width as f64;
        let mut total = 0.0;
        let mut ch = 2.0;
        for (k, &o) in self.prior.iter().enumerate() {
            let side = self.factor >> (k + 1);
            total += 2.0 * 9.0 * ch * o as f64 * hw * (side * side) as f64;
            ch = o as f64;
        }
        total += self.prior_extra as f64 * 2.0 * 9.0 * ch * ch * hw;
        let mask_dim = ch + 2.0;
        let pooled = hw / (self.cross_pool * self.cross_pool) as f64;
        total += 2.0 * ch * c * hw + 2.0 * ch * width * pooled; // prior α₀ and its tokens
        total += 2.0 * (3.0 * c + mask_dim) * f * hw; // stem
        for &p in &self.patches {
            let p2 = (p * p) as f64;
            let l = hw / p2;
            total += 2.0 * l * (f * p2 * width + mask_dim * p2 * 2.0 * width + width * f * p2);
            total += 2.0 * l * 4.0 * width * width + 4.0 * l * l * width; // self-attention
            if p == 1 {
                total += 2.0 * l * 2.0 * width * width + 2.0 * pooled * 2.0 * width * width;
                total += 4.0 * l * pooled * width;
            }
            total += 2.0 * l * 8.0 * width * width; // MLP
        }
        total + 2.0 * 2.0 * f * c * hw // α and s heads
    }
}

/// A linear layer starting at zero (weights and bias): a correction that begins as nothing.
fn zero_linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((o, i), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// A 1×1 convolution starting at zero.
fn zero_conv1(i: usize, o: usize, vb: VarBuilder) -> Result<Conv2d> {
    let w = vb.get_with_hints((o, i, 1, 1), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(o, "bias", Init::Const(0.0))?;
    Ok(Conv2d::new(w, Some(b), Conv2dConfig::default()))
}

/// (B, C, h, w) → (B, h/p · w/p, C·p²), patches row-major.
fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / p, p, w / p, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, (h / p) * (w / p), c * p * p))
}

/// The inverse of [`patchify`] for a (h, w) grid.
fn unpatchify(t: &Tensor, p: usize, c: usize, (h, w): (usize, usize)) -> Result<Tensor> {
    let b = t.dim(0)?;
    t.reshape((b, h / p, w / p, c, p, p))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, c, h, w))
}

/// RoPE angles for an (rows × cols) grid of tokens: axes (0, row, col).
fn grid_rope(
    b: usize,
    rows: usize,
    cols: usize,
    head: usize,
    dev: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let ids: Vec<f32> = (0..rows * cols)
        .flat_map(|i| [0.0, (i / cols) as f32, (i % cols) as f32])
        .collect();
    let ids = Tensor::from_vec(ids, (1, rows * cols, 3), dev)?.repeat((b, 1, 1))?;
    // The first axis (always 0) leaves 4 dimensions unrotated; rows and columns share the rest.
    let half = (head - 4) / 2;
    rope(&ids, &[4, half, half], 10_000.0)
}

/// Multi-head attention of `x` (B, L, W) to `kv` (B, M, W) (itself when `None`).
struct Attention {
    q: Linear,
    kv: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: candle_nn::linear(width, width, vb.pp("q"))?,
            kv: candle_nn::linear(width, 2 * width, vb.pp("kv"))?,
            out: candle_nn::linear(width, width, vb.pp("out"))?,
            heads,
        })
    }

    fn forward(&self, x: &Tensor, kv: &Tensor, pe: Option<&(Tensor, Tensor)>) -> Result<Tensor> {
        let (b, l, w) = x.dims3()?;
        let m = kv.dim(1)?;
        let hd = w / self.heads;
        let heads = |t: Tensor, n: usize| {
            t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads(linear(&self.q, x)?, l)?;
        let kvp = linear(&self.kv, kv)?;
        let (k, v) = (
            heads(kvp.narrow(D::Minus1, 0, w)?, m)?,
            heads(kvp.narrow(D::Minus1, w, w)?, m)?,
        );
        let (q, k) = match pe {
            Some((cos, sin)) => (apply_rope(&q, cos, sin)?, apply_rope(&k, cos, sin)?),
            None => (q, k),
        };
        let o = attend(&q, &k, &v, 1.0 / (hd as f64).sqrt(), None)?;
        linear(&self.out, &o)
    }
}

/// One block at one patch size.
struct Block {
    patch: usize,
    input: Linear,
    film: Linear,
    attn: Attention,
    cross: Option<Attention>,
    mlp: (Linear, Linear),
    output: Linear,
}

impl Block {
    fn new(c: &DecConfig, patch: usize, mask_dim: usize, vb: VarBuilder) -> Result<Self> {
        let (w, p2) = (c.width, patch * patch);
        Ok(Self {
            patch,
            input: candle_nn::linear(c.features * p2, w, vb.pp("input"))?,
            film: zero_linear(mask_dim * p2, 2 * w, vb.pp("film"))?,
            attn: Attention::new(w, c.heads, vb.pp("attn"))?,
            cross: (patch == 1)
                .then(|| Attention::new(w, c.heads, vb.pp("cross")))
                .transpose()?,
            mlp: (
                candle_nn::linear(w, 4 * w, vb.pp("mlp.0"))?,
                candle_nn::linear(4 * w, w, vb.pp("mlp.2"))?,
            ),
            output: zero_linear(w, c.features * p2, vb.pp("output"))?,
        })
    }

    /// `f` (B, F, h, w) plus this block's write-back.
    fn forward(&self, f: &Tensor, mask: &Tensor, prior: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, feats, h, w) = f.dims4()?;
        let p = self.patch;
        let x = linear(&self.input, &patchify(f, p)?)?;
        let film = linear(&self.film, &patchify(mask, p)?)?;
        let width = x.dim(2)?;
        let (scale, shift) = (film.narrow(2, 0, width)?, film.narrow(2, width, width)?);
        let pe = grid_rope(b, h / p, w / p, width / heads, f.device())?;
        let n = layer_norm(&x)?.mul(&(scale + 1.0)?)?.add(&shift)?;
        let mut x = (&x + self.attn.forward(&n, &n, Some(&pe))?)?;
        if let Some(cross) = &self.cross {
            x = (&x + cross.forward(&layer_norm(&x)?, prior, None)?)?;
        }
        let hidden = gelu(&linear(&self.mlp.0, &layer_norm(&x)?)?)?;
        let x = (&x + linear(&self.mlp.1, &hidden)?)?;
        f + unpatchify(&linear(&self.output, &x)?, p, feats, (h, w))?
    }
}

/// DecFormer.
pub struct DecFormer {
    cfg: DecConfig,
    prior: Vec<Conv2d>,
    prior_alpha: Conv2d,
    prior_tokens: Linear,
    stem: Conv2d,
    blocks: Vec<Block>,
    alpha: Conv2d,
    residual: Conv2d,
}

/// What [`DecFormer::forward`] returns.
pub struct Blend {
    /// ẑ (B, C, h, w).
    pub z: Tensor,
    /// The per-channel blend α (B, C, h, w).
    pub alpha: Tensor,
    /// The prior's α₀ (B, C, h, w).
    pub alpha0: Tensor,
    /// The residual s before its gate (B, C, h, w).
    pub residual: Tensor,
}

/// The mask clamp before its logit.
const EPS: f64 = 1e-4;

fn logit(p: &Tensor) -> Result<Tensor> {
    let p = p.clamp(EPS, 1.0 - EPS)?;
    (&p / (1.0 - &p)?)?.log()
}

impl DecFormer {
    /// Builds it under `vb`.
    pub fn new(c: &DecConfig, vb: VarBuilder) -> Result<Self> {
        let head = c.width / c.heads.max(1);
        if !c.width.is_multiple_of(c.heads.max(1)) || !head.is_multiple_of(4) || head < 8 {
            candle_core::bail!(
                "width {} over {} heads: each head needs a multiple of 4 dimensions, at least 8",
                c.width,
                c.heads
            );
        }
        if !c.factor.is_power_of_two() || c.prior.len() != c.factor.trailing_zeros() as usize {
            candle_core::bail!(
                "factor {} needs one prior convolution per halving ({} given)",
                c.factor,
                c.prior.len()
            );
        }
        let conv = |i: usize, o: usize, stride: usize, vb: VarBuilder| {
            let cfg = Conv2dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            candle_nn::conv2d(i, o, 3, cfg, vb)
        };
        let mut prior = Vec::new();
        let mut ch = 2;
        for (k, &o) in c.prior.iter().enumerate() {
            prior.push(conv(ch, o, 2, vb.pp(format!("prior.{k}")))?);
            ch = o;
        }
        for k in 0..c.prior_extra {
            prior.push(conv(
                ch,
                ch,
                1,
                vb.pp(format!("prior.{}", c.prior.len() + k)),
            )?);
        }
        let mask_dim = ch + 2;
        let blocks = c
            .patches
            .iter()
            .enumerate()
            .map(|(k, &p)| Block::new(c, p, mask_dim, vb.pp(format!("blocks.{k}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            prior,
            prior_alpha: zero_conv1(ch, c.latent, vb.pp("prior_alpha"))?,
            prior_tokens: candle_nn::linear(ch, c.width, vb.pp("prior_tokens"))?,
            stem: candle_nn::conv2d(
                3 * c.latent + mask_dim,
                c.features,
                1,
                Default::default(),
                vb.pp("stem"),
            )?,
            blocks,
            alpha: zero_conv1(c.features, c.latent, vb.pp("alpha"))?,
            residual: zero_conv1(c.features, c.latent, vb.pp("residual"))?,
            cfg: c.clone(),
        })
    }

    /// Its shape.
    pub fn config(&self) -> &DecConfig {
        &self.cfg
    }

    /// The halo band of masks (B, 1, H, W) in [0, 1]: dilation minus erosion over a square
    /// of half-width `halo_px`.
    pub fn halo_band(&self, mask: &Tensor) -> Result<Tensor> {
        let r = self.cfg.halo_px;
        let k = 2 * r + 1;
        let pad = |t: &Tensor| t.pad_with_same(2, r, r)?.pad_with_same(3, r, r);
        let dilated = pad(mask)?.max_pool2d_with_stride(k, 1)?;
        let eroded = pad(&mask.neg()?)?.max_pool2d_with_stride(k, 1)?.neg()?;
        dilated - eroded
    }

    /// Blends `za` and `zb` (B, C, h, w) under pixel mask `mask` (B, 1, H, W; 1 takes B),
    /// with the residual scaled by `gate`.
    pub fn forward(&self, za: &Tensor, zb: &Tensor, mask: &Tensor, gate: f64) -> Result<Blend> {
        let c = &self.cfg;
        let (b, _, h, w) = za.dims4()?;
        let (mh, mw) = (mask.dim(2)?, mask.dim(3)?);
        if (mh, mw) != (h * c.factor, w * c.factor) || zb.dims() != za.dims() {
            candle_core::bail!(
                "latents {:?} and {:?} with a {mh}×{mw} mask: DecFormer needs equal latents and a mask {}× their size",
                za.dims(),
                zb.dims(),
                c.factor
            );
        }
        if let Some(p) = c
            .patches
            .iter()
            .chain([&c.cross_pool])
            .find(|&&p| h % p != 0 || w % p != 0)
        {
            candle_core::bail!("a {h}×{w} latent grid does not split into {p}×{p} patches");
        }
        let band = self.halo_band(mask)?;
        let mut p = Tensor::cat(&[mask, &band], 1)?;
        for (k, conv) in self.prior.iter().enumerate() {
            p = conv.forward(&p)?;
            if k + 1 < self.prior.len() {
                p = candle_nn::ops::silu(&p)?;
            }
        }
        let area = mask.avg_pool2d(c.factor)?; // (B, 1, h, w)
        let area_band = band.avg_pool2d(c.factor)?;
        let base = logit(&area)?.broadcast_as((b, c.latent, h, w))?;
        let alpha0_logit = (base + self.prior_alpha.forward(&p)?)?;
        let alpha0 = candle_nn::ops::sigmoid(&alpha0_logit)?;
        let mask_feats = Tensor::cat(&[&p, &area, &area_band], 1)?;
        let pooled = p.avg_pool2d(c.cross_pool)?;
        let (ph, pw) = (pooled.dim(2)?, pooled.dim(3)?);
        let tokens = pooled
            .flatten_from(2)?
            .transpose(1, 2)?
            .reshape((b, ph * pw, p.dim(1)?))?;
        let prior_tokens = linear(&self.prior_tokens, &tokens)?;
        let mut f = self
            .stem
            .forward(&Tensor::cat(&[za, zb, &alpha0, &mask_feats], 1)?)?;
        for block in &self.blocks {
            f = block.forward(&f, &mask_feats, &prior_tokens, c.heads)?;
        }
        let alpha = candle_nn::ops::sigmoid(&(alpha0_logit + self.alpha.forward(&f)?)?)?;
        let residual = self.residual.forward(&f)?;
        let z = compose(za, zb, &alpha, &residual, gate)?;
        Ok(Blend {
            z,
            alpha,
            alpha0,
            residual,
        })
    }

    /// The baseline it starts from: the blend with the area-downsampled mask.
    pub fn linear_blend(za: &Tensor, zb: &Tensor, mask: &Tensor, factor: usize) -> Result<Tensor> {
        let a = mask
            .avg_pool2d(factor)?
            .broadcast_as(za.shape())?
            .to_dtype(za.dtype())?;
        (za * (1.0 - &a)?)? + (zb * &a)?
    }
}

/// Sets the variables of `vm`, a DecFormer of shape `grown` built under the root, from
/// `path`, a trained one of shape `from`. `grown` may add patch-1 blocks after `from`'s and
/// widen the feature map; nothing else may differ. The grown model starts as the trained
/// one: an added block's write-back is zero, and every weight that reads an added feature
/// channel is zero, while those that write one keep their initial values, so the new
/// channels carry a signal for their readers to learn from. Returns how many variables it
/// set from the file.
pub fn load_grown(
    vm: &candle_nn::VarMap,
    path: &std::path::Path,
    from: &DecConfig,
    grown: &DecConfig,
) -> std::result::Result<usize, String> {
    let kept = from.patches.len();
    let same = DecConfig {
        patches: grown.patches[..kept.min(grown.patches.len())].to_vec(),
        features: from.features,
        ..grown.clone()
    };
    if same != *from
        || grown.features < from.features
        || grown.patches[kept..].iter().any(|&p| p != 1)
    {
        return Err(format!(
            "{}: a DecFormer of {from:?} grows only by patch-1 blocks after its own and a wider feature map, not into {grown:?}",
            path.display()
        ));
    }
    let added = |name: &str| {
        name.strip_prefix("blocks.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok())
            .is_some_and(|k| k >= kept)
    };
    crate::init::load_fitted(vm, path, added, embed)
}

/// `old` in the leading corner of `init`'s shape: the rest of `old`'s rows (dimension 0) is
/// zero, the rows beyond them keep `init`.
fn embed(init: &Tensor, old: Tensor) -> Result<Tensor> {
    if init.dims() == old.dims() {
        return Ok(old);
    }
    let (new, was) = (init.dims(), old.dims());
    if new.len() != was.len() || new.iter().zip(was).any(|(n, w)| w > n) {
        candle_core::bail!("{was:?} does not fit in {new:?}");
    }
    let rows: Vec<std::ops::Range<usize>> = std::iter::once(0..was[0])
        .chain(new[1..].iter().map(|&n| 0..n))
        .collect();
    let mut zero_shape = new.to_vec();
    zero_shape[0] = was[0];
    let zero = Tensor::zeros(zero_shape, init.dtype(), init.device())?;
    let corner: Vec<std::ops::Range<usize>> = was.iter().map(|&w| 0..w).collect();
    init.slice_assign(&rows, &zero)?.slice_assign(&corner, &old)
}

/// ẑ = (1 − α) ⊙ z_A + α ⊙ z_B + gate · s (DESIGN.md §4.4); a zero gate adds nothing.
pub fn compose(za: &Tensor, zb: &Tensor, alpha: &Tensor, s: &Tensor, gate: f64) -> Result<Tensor> {
    let blend = ((za * (1.0 - alpha)?)? + (zb * alpha)?)?;
    if gate == 0.0 {
        Ok(blend)
    } else {
        blend + (s * gate)?
    }
}
