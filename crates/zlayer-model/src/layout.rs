//! The pieces of OcclusionFormer's layout branch that do not depend on a block
//! (DESIGN.md §4.1, §4.3): layout tokens, packing instances into ragged sequences, and the
//! Z-order composition by volume rendering, all differentiable in candle.
//!
//! Packing: every instance of every scene in the batch becomes one sequence, its layout token
//! followed by the image tokens inside its box. Sequences are padded to the longest box in the
//! batch and attended in one call, with padded keys masked out, so the cost grows with the
//! boxes, not with instances × canvas. Outputs are scattered back onto per-instance canvases
//! (zero outside the box), which is what the composition needs.

use crate::layers::masked_attention;
use candle_core::{D, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// Points per box side of the layout token's box embedding.
pub const BOX_GRID: usize = 6;
/// Fourier frequencies per box coordinate.
pub const BOX_FREQS: usize = 8;
/// Width of the Fourier box embedding: 6×6 points × (x, y) × frequencies × (sin, cos).
pub const BOX_EMBED: usize = BOX_GRID * BOX_GRID * 2 * BOX_FREQS * 2;

/// The 6×6 grid of points over a box normalised to [0, 1], as (x, y) pairs with x the outer
/// loop, corners included: the official code's `layout_boxes_dense`.
pub fn box_points(b: [f32; 4]) -> [f32; BOX_GRID * BOX_GRID * 2] {
    let mut out = [0.0; BOX_GRID * BOX_GRID * 2];
    let step = |lo: f32, hi: f32, i: usize| lo + (hi - lo) * i as f32 / (BOX_GRID - 1) as f32;
    for i in 0..BOX_GRID {
        for j in 0..BOX_GRID {
            let k = 2 * (i * BOX_GRID + j);
            out[k] = step(b[0], b[2], i);
            out[k + 1] = step(b[1], b[3], j);
        }
    }
    out
}

/// Fourier features of (N, C) coordinates: for each frequency 100^(k/8), the sines of every
/// coordinate then their cosines → (N, C·2·8), frequency-major as in GLIGEN and the official
/// code.
pub fn fourier(x: &Tensor) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(2 * BOX_FREQS);
    for k in 0..BOX_FREQS {
        let fx = (x * 100f64.powf(k as f64 / BOX_FREQS as f64))?;
        parts.push(fx.sin()?);
        parts.push(fx.cos()?);
    }
    Tensor::cat(&parts, D::Minus1)
}

/// Two linears with SiLU between (`linear_1`, `linear_2`).
#[derive(Debug, Clone)]
struct Projection(Linear, Linear);

impl Projection {
    fn new(input: usize, hidden: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(
            candle_nn::linear(input, hidden, vb.pp("linear_1"))?,
            candle_nn::linear(hidden, out, vb.pp("linear_2"))?,
        ))
    }
}

impl Module for Projection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.1.forward(&self.0.forward(x)?.silu()?)
    }
}

/// One token per instance from its pooled caption and its box (`layout_net.*`):
/// `linears([text_embedder(pooled), fourier(box points)])`.
#[derive(Debug, Clone)]
pub struct LayoutNet {
    text: Projection,
    linears: Projection,
}

impl LayoutNet {
    /// `pooled`: width of the pooled caption; `hidden`: the DiT's width.
    pub fn new(pooled: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            text: Projection::new(pooled, hidden, hidden, vb.pp("text_embedder"))?,
            linears: Projection::new(hidden + BOX_EMBED, hidden / 2, hidden, vb.pp("linears"))?,
        })
    }

    /// Layout tokens (N, hidden) from pooled captions (N, pooled) and box points (N, 72).
    pub fn forward(&self, pooled: &Tensor, points: &Tensor) -> Result<Tensor> {
        let x = Tensor::cat(&[self.text.forward(pooled)?, fourier(points)?], D::Minus1)?;
        self.linears.forward(&x)
    }
}

/// Instances of a batch packed as ragged sequences: index tables for gathering their box
/// tokens from the canvases and scattering results back.
#[derive(Debug, Clone)]
pub struct Packing {
    /// Instances N.
    pub n: usize,
    /// Tokens per canvas L.
    pub tokens: usize,
    /// Image positions per sequence, the longest box: sequences are 1 + this long.
    pub len: usize,
    /// (N·len,) u32 rows of the flattened canvases (B·L) to gather, or B·L (a zero row) for
    /// padding.
    gather: Tensor,
    /// (N·len,) u32 rows of the flattened instance canvases (N·L) to scatter to, or N·L
    /// (a discarded row) for padding.
    scatter: Tensor,
    /// (N, 1, 1, 1 + len) additive attention bias: 0 for real keys, −1e9 for padding.
    pub bias: Tensor,
    /// (N, 1 + len, 3) RoPE ids: the layout token's, then its image tokens'.
    pub ids: Tensor,
    /// The scene each instance belongs to.
    pub scene: Vec<usize>,
}

/// Checks instance boxes `(scene, token indices, RoPE id)` against a batch of `batch`
/// canvases of `tokens` tokens.
pub(crate) fn check_boxes(
    boxes: &[(usize, Vec<usize>, [f32; 3])],
    batch: usize,
    tokens: usize,
) -> Result<()> {
    for (k, (b, idx, _)) in boxes.iter().enumerate() {
        if *b >= batch || idx.iter().any(|&p| p >= tokens) {
            candle_core::bail!("instance {k}: scene {b} or a token index is out of range");
        }
    }
    Ok(())
}

impl Packing {
    /// `boxes[n] = (scene b, token indices inside the box, layout token's RoPE id)`, with
    /// `img_ids` (B, L, 3) the canvases' RoPE ids.
    pub fn new(
        boxes: &[(usize, Vec<usize>, [f32; 3])],
        batch: usize,
        img_ids: &Tensor,
    ) -> Result<Self> {
        let dev = img_ids.device();
        let (_, tokens, _) = img_ids.dims3()?;
        check_boxes(boxes, batch, tokens)?;
        let n = boxes.len();
        let len = boxes.iter().map(|b| b.1.len()).max().unwrap_or(0).max(1);
        let ids_flat: Vec<f32> = img_ids.flatten_all()?.to_vec1()?;
        let mut gather = Vec::with_capacity(n * len);
        let mut scatter = Vec::with_capacity(n * len);
        let mut bias = Vec::with_capacity(n * (len + 1));
        let mut ids = Vec::with_capacity(n * (len + 1) * 3);
        for (k, (b, idx, layout_id)) in boxes.iter().enumerate() {
            bias.push(0f32);
            ids.extend_from_slice(layout_id);
            for s in 0..len {
                match idx.get(s) {
                    Some(&p) => {
                        gather.push((b * tokens + p) as u32);
                        scatter.push((k * tokens + p) as u32);
                        bias.push(0.0);
                        ids.extend_from_slice(&ids_flat[(b * tokens + p) * 3..][..3]);
                    }
                    None => {
                        gather.push((batch * tokens) as u32);
                        scatter.push((n * tokens) as u32);
                        bias.push(-1e9);
                        ids.extend_from_slice(&[0.0; 3]);
                    }
                }
            }
        }
        Ok(Self {
            n,
            tokens,
            len,
            gather: Tensor::from_vec(gather, n * len, dev)?,
            scatter: Tensor::from_vec(scatter, n * len, dev)?,
            bias: Tensor::from_vec(bias, (n, 1, 1, len + 1), dev)?,
            ids: Tensor::from_vec(ids, (n, len + 1, 3), dev)?,
            scene: boxes.iter().map(|b| b.0).collect(),
        })
    }

    /// Sequences (N, 1 + len, D): each layout token (N, D), then its box's tokens from
    /// `img` (B, L, D), zeros for padding.
    pub fn pack(&self, layout: &Tensor, img: &Tensor) -> Result<Tensor> {
        let (b, l, d) = img.dims3()?;
        let flat = Tensor::cat(
            &[
                img.reshape((b * l, d))?,
                Tensor::zeros((1, d), img.dtype(), img.device())?,
            ],
            0,
        )?;
        let boxed = flat
            .index_select(&self.gather, 0)?
            .reshape((self.n, self.len, d))?;
        Tensor::cat(&[layout.unsqueeze(1)?, boxed], 1)
    }

    /// The image part of sequences (N, 1 + len, D) scattered onto instance canvases
    /// (N, L, D), zero outside each box; the layout tokens (N, D) are returned apart.
    pub fn unpack(&self, seq: &Tensor) -> Result<(Tensor, Tensor)> {
        let d = seq.dim(2)?;
        let layout = seq.narrow(1, 0, 1)?.squeeze(1)?;
        let img = seq
            .narrow(1, 1, self.len)?
            .reshape((self.n * self.len, d))?;
        let canvas = Tensor::zeros((self.n * self.tokens + 1, d), seq.dtype(), seq.device())?
            .index_add(&self.scatter, &img, 0)?
            .narrow(0, 0, self.n * self.tokens)?
            .reshape((self.n, self.tokens, d))?;
        Ok((canvas, layout))
    }

    /// Attention within each packed sequence: q, k, v (N, H, 1 + len, Dh) → (N, 1 + len, H·Dh).
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pe: &(Tensor, Tensor),
    ) -> Result<Tensor> {
        masked_attention(q, k, v, pe, Some(&self.bias))
    }
}

/// Z-order composition of instance canvases (DESIGN.md §4.1), differentiable, for the
/// instances of a whole batch: `layers` (N, L, D), `sigma` (N, D) ≥ 0, soft box masks
/// `masks` (N, L), each instance's occluders (indices into 0..N, of the same scene), and the
/// scene (< `batch`) of each instance. Returns Z (batch, L, D) and the weights w (N, L, D);
/// Z is 0 where every weight of its scene is.
pub fn compose(
    layers: &Tensor,
    sigma: &Tensor,
    masks: &Tensor,
    occluders: &[Vec<usize>],
    scene: &[usize],
    batch: usize,
) -> Result<(Tensor, Tensor)> {
    let (n, l, d) = layers.dims3()?;
    let dev = layers.device();
    if scene.len() != n || occluders.len() != n || scene.iter().any(|&s| s >= batch) {
        candle_core::bail!(
            "compose: {n} layers, {} scene ids, {} occluder sets",
            scene.len(),
            occluders.len()
        );
    }
    // O (N, N): O[i][j] = 1 when j occludes i. Σ_j O_ij σ_j b_j(p) for every i, p, d as one
    // matmul over j: (N, N) × (N, L·D).
    let mut o = vec![0f32; n * n];
    for (i, occ) in occluders.iter().enumerate() {
        for &j in occ {
            if j < n && j != i && scene[j] == scene[i] {
                o[i * n + j] = 1.0;
            }
        }
    }
    let o = Tensor::from_vec(o, (n, n), dev)?.to_dtype(layers.dtype())?;
    let b = masks.unsqueeze(2)?; // (N, L, 1)
    let sb = b.broadcast_mul(&sigma.unsqueeze(1)?)?; // (N, L, D)
    let optical = o.matmul(&sb.reshape((n, l * d))?)?.reshape((n, l, d))?;
    let transmittance = optical.neg()?.exp()?;
    let alpha = (sigma.neg()?.exp()?.neg()? + 1.0)?.unsqueeze(1)?; // 1 − e^{−σ}, (N, 1, D)
    let w = transmittance.broadcast_mul(&alpha)?.broadcast_mul(&b)?;
    let ids = Tensor::from_vec(scene.iter().map(|&s| s as u32).collect::<Vec<_>>(), n, dev)?;
    let zeros = Tensor::zeros((batch, l, d), layers.dtype(), dev)?;
    let num = zeros.index_add(&ids, &(&w * layers)?, 0)?;
    let den = zeros.index_add(&ids, &w, 0)?;
    // Where every weight is 0 so is the numerator: add 1e-8 to the denominator there only
    // (as the official code), so that Z and its gradient are 0, not NaN.
    let empty = den.eq(0.0)?.to_dtype(den.dtype())?;
    let z = (num / (den + (empty * 1e-8)?)?)?;
    Ok((z, w))
}

/// Density σ > 0 per channel.
pub const SIGMA_SCALE: f64 = 5.0;

/// The per-block head of the layout branch: densities and alignment queries from each
/// instance's embedding e_i (`norm1_layout.{linear, query_liner}`), and the queried alignment
/// CNN (`mask_predictor.{0, 2, 4}`: 1→32→16→2 channels, 3×3, 3×3, 1×1, GELU between).
#[derive(Debug, Clone)]
pub struct ZHead {
    sigma: Linear,
    query: Linear,
    cnn: [crate::vae::Conv; 3],
}

impl ZHead {
    /// `dim`: the block's width.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let n = vb.pp("norm1_layout");
        let m = vb.pp("mask_predictor");
        Ok(Self {
            sigma: candle_nn::linear(dim, dim, n.pp("linear"))?,
            query: candle_nn::linear(dim, dim, n.pp("query_liner"))?,
            cnn: [
                crate::vae::conv(1, 32, 3, 1, m.pp("0"))?,
                crate::vae::conv(32, 16, 3, 1, m.pp("2"))?,
                crate::vae::conv(16, 2, 1, 1, m.pp("4"))?,
            ],
        })
    }

    /// σ_i = 5·softplus(linear(SiLU(e_i))) and q_i = query_liner(SiLU(e_i)), each (N, dim),
    /// from e (N, dim).
    pub fn sigma_query(&self, e: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = e.silu()?;
        let raw = self.sigma.forward(&s)?;
        // softplus(x) = max(x, 0) + ln(1 + e^{−|x|}), stable for large |x|.
        let softplus = (raw.relu()? + (raw.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
        Ok(((softplus * SIGMA_SCALE)?, self.query.forward(&s)?))
    }

    /// Background/foreground logits (N, L, 2) on an `h × w` token grid: the cosine of each
    /// instance canvas (N, L, D) with its query (N, D), times its soft box mask (N, L), through
    /// the CNN.
    pub fn align_logits(
        &self,
        canvases: &Tensor,
        query: &Tensor,
        masks: &Tensor,
        grid: (usize, usize),
    ) -> Result<Tensor> {
        let n = canvases.dim(0)?;
        let unit = |x: &Tensor| -> Result<Tensor> {
            // F.normalize: x / max(‖x‖, 1e-12). Clamped before the root: the root's
            // gradient at 0 is infinite, and canvases are 0 outside their boxes.
            let norm = x
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .clamp(1e-24, f64::INFINITY)?
                .sqrt()?;
            x.broadcast_div(&norm)
        };
        let cos = unit(canvases)?
            .broadcast_mul(&unit(query)?.unsqueeze(1)?)?
            .sum(D::Minus1)?; // (N, L)
        let x = (cos * masks)?.reshape((n, 1, grid.0, grid.1))?;
        let x = self.cnn[0].forward(&x)?.gelu_erf()?;
        let x = self.cnn[1].forward(&x)?.gelu_erf()?;
        let x = self.cnn[2].forward(&x)?; // (N, 2, h, w)
        x.reshape((n, 2, grid.0 * grid.1))?.transpose(1, 2)
    }
}

/// The layout tokens' attention over their packed sequences, averaged over heads: q, k
/// (N, H, 1 + len, Dh) → (N, 1 + len), the first query row of each (RoPE applied, padded keys
/// masked by `bias`).
pub fn layout_attention(
    q: &Tensor,
    k: &Tensor,
    pe: &(Tensor, Tensor),
    bias: &Tensor,
) -> Result<Tensor> {
    let (q, k) = (
        crate::layers::apply_rope(q, &pe.0, &pe.1)?,
        crate::layers::apply_rope(k, &pe.0, &pe.1)?,
    );
    let d = q.dim(D::Minus1)?;
    let q0 = q.narrow(2, 0, 1)?.contiguous()?;
    let scores = (q0.matmul(&k.t()?.contiguous()?)? / (d as f64).sqrt())?.broadcast_add(bias)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?
        .mean(1)?
        .squeeze(1)
}

/// The `attn-map-loss` ablation's loss: the share of each layout token's attention to image
/// tokens that falls outside its amodal mask, averaged over instances. `attn` (N, L) is that
/// attention on the canvas, `target` (N, L) the {0, 1} mask.
pub fn attention_map_loss(attn: &Tensor, target: &Tensor) -> Result<Tensor> {
    let inside = (attn * target.to_dtype(attn.dtype())?)?.sum(D::Minus1)?;
    let total = (attn.sum(D::Minus1)? + 1e-8)?;
    ((inside / total)?.neg()? + 1.0)?.mean_all()
}

/// Mean cross-entropy of logits (N, L, 2) against a {0, 1} target (N, L) (1 = inside the
/// instance's amodal mask): the queried alignment loss.
pub fn align_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let fg = logp.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let bg = logp.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let t = target.to_dtype(logits.dtype())?;
    let ll = ((&t * fg)? + ((t.neg()? + 1.0)? * bg)?)?;
    ll.mean_all()?.neg()
}
