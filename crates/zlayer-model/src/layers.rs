//! Building blocks, all with a backward pass in candle 0.11.
//!
//! candle's fused `softmax_last_dim`, `rms_norm`, `layer_norm` and rope kernels have no
//! backward (DESIGN.md §6): gradients silently stop there. f32 on the CPU (tiny training and
//! sampling) takes [`crate::fused`]'s kernels, which carry hand-written backward passes;
//! every other dtype and device takes the form composed from plain ops written here.
//! `tests/fused.rs` checks the two agree, and `tests/gradients.rs` that every parameter
//! receives a gradient. Structure and names follow black-forest-labs/flux `modules/layers.py`.

use candle_core::{D, DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// RMS normalisation over the last dimension with a learned scale (`…scale` key).
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::fused::applies(x) {
        return crate::fused::rms_norm(x, eps)?.broadcast_mul(scale);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&rms)?.to_dtype(dtype)?.broadcast_mul(scale)
}

/// Layer normalisation over the last dimension, without affine parameters (eps 1e-6).
/// Statistics are taken in f32 whatever the input's type, as FLUX's norms do in bf16.
pub fn layer_norm(x: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(x) {
        return crate::fused::layer_norm(x, 1e-6);
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + 1e-6)?.sqrt()?)?.to_dtype(dtype)
}

/// Sinusoidal embedding of timesteps `t` (B,) scaled by 1000, as Flux does: (B, dim).
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    const MAX_PERIOD: f64 = 10_000.0;
    let dev = t.device();
    let half = dim / 2;
    let freqs = (Tensor::arange(0u32, half as u32, dev)?.to_dtype(DType::F32)?
        * (-MAX_PERIOD.ln() / half as f64))?
        .exp()?;
    let args =
        (t.to_dtype(DType::F32)?.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs.unsqueeze(0)?)?; // (B, half)
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(t.dtype())
}

/// RoPE angles for ids (B, L, 3): returns (cos, sin), each (B, 1, L, head_dim/2).
pub fn rope(ids: &Tensor, axes_dim: &[usize; 3], theta: f64) -> Result<(Tensor, Tensor)> {
    let dev = ids.device();
    let mut angles = Vec::with_capacity(3);
    for (a, &d) in axes_dim.iter().enumerate() {
        let pos = ids.narrow(D::Minus1, a, 1)?.to_dtype(DType::F32)?; // (B, L, 1)
        let omega =
            (Tensor::arange_step(0f32, d as f32, 2.0, dev)? * (-theta.ln() / d as f64))?.exp()?; // (d/2,)
        angles.push(pos.broadcast_mul(&omega.unsqueeze(0)?.unsqueeze(0)?)?); // (B, L, d/2)
    }
    let ang = Tensor::cat(&angles, D::Minus1)?.unsqueeze(1)?; // (B, 1, L, head_dim/2)
    Ok((ang.cos()?, ang.sin()?))
}

/// Rotates consecutive pairs (x₀, x₁) of the last dimension: (B, H, L, D).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(x) && crate::fused::applies(cos) {
        return crate::fused::rope(x, cos, sin);
    }
    let (b, h, l, d) = x.dims4()?;
    let x = x.reshape((b, h, l, d / 2, 2))?;
    let (x0, x1) = (
        x.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?,
        x.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?,
    );
    let cos = cos.to_dtype(x0.dtype())?;
    let sin = sin.to_dtype(x0.dtype())?;
    let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::stack(&[r0, r1], D::Minus1)?.reshape((b, h, l, d))
}

/// Scaled dot-product attention with RoPE: q, k, v (B, H, L, D) → (B, L, H·D).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, pe: &(Tensor, Tensor)) -> Result<Tensor> {
    masked_attention(q, k, v, pe, None)
}

/// [`attention`] with an additive bias on the scores, broadcast to (B, H, L, L): 0 where a
/// key may be attended, a large negative number where not (padding of packed sequences).
pub fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pe: &(Tensor, Tensor),
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (q, k) = (apply_rope(q, &pe.0, &pe.1)?, apply_rope(k, &pe.0, &pe.1)?);
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    attend(&q, &k, v, scale, bias)
}

/// `softmax(scale · q kᵀ + bias) v` for q, k, v (B, H, L, D), as (B, L, H·D).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let same = k.dims() == q.dims() && v.dims() == q.dims();
    if crate::fused::applies(q) && same && bias.is_none_or(|t| crate::fused::bias_fits(t, b, l)) {
        return crate::fused::attention(q, k, v, scale, bias);
    }
    let probs = softmax_scores(&q.matmul(&k.t()?)?, scale, bias)?; // (B, H, L, L)
    probs.matmul(v)?.transpose(1, 2)?.reshape((b, l, h * d))
}

/// q, k, v heads stacked as (3, B, H, L, D) from a fused projection (B, L, 3·H·D): q and k
/// RMS-normalised with `norm`'s scales and rotated by the angles `pe` of these tokens.
pub fn qkv_heads(
    qkv: &Tensor,
    norm: &QkNorm,
    pe: (&Tensor, &Tensor),
    heads: usize,
) -> Result<Tensor> {
    if crate::fused::applies(qkv) && crate::fused::applies(pe.0) {
        return crate::fused::qkv_heads(qkv, &norm.query, &norm.key, pe, heads, 1e-6);
    }
    let (q, k, v) = split_qkv(qkv, heads)?;
    let (q, k) = norm.forward(&q, &k)?;
    let (q, k) = (apply_rope(&q, pe.0, pe.1)?, apply_rope(&k, pe.0, pe.1)?);
    Tensor::stack(&[q, k, v.contiguous()?], 0)
}

/// Attention over heads stacked by [`qkv_heads`] (3, B, H, L, D), scale 1/√D: (B, L, H·D).
pub fn attend_stacked(qkv: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (b, l, d) = (qkv.dim(1)?, qkv.dim(3)?, qkv.dim(4)?);
    let scale = 1.0 / (d as f64).sqrt();
    if crate::fused::applies(qkv) && bias.is_none_or(|t| crate::fused::bias_fits(t, b, l)) {
        return crate::fused::attention_stacked(qkv, scale, bias);
    }
    attend(&qkv.get(0)?, &qkv.get(1)?, &qkv.get(2)?, scale, bias)
}

/// `softmax(scale · scores + bias)` over keys, the bias broadcast to the scores' shape.
pub fn softmax_scores(scores: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    if crate::fused::applies(scores) {
        return match bias {
            None => crate::fused::softmax_last(scores, scale),
            Some(bias) => crate::fused::softmax_last(
                &(scores * scale)?.broadcast_add(&bias.to_dtype(DType::F32)?)?,
                1.0,
            ),
        };
    }
    let mut scores = (scores * scale)?;
    if let Some(bias) = bias {
        scores = scores.broadcast_add(&bias.to_dtype(scores.dtype())?)?;
    }
    // Half precision is for inference (FLUX.1-dev in bf16), which needs no backward: the
    // fused softmax accumulates in f32 there, where the composed one would sum thousands of
    // keys in bf16. Other f32 devices take the differentiable form (DESIGN.md §6).
    if matches!(scores.dtype(), DType::BF16 | DType::F16) {
        candle_nn::ops::softmax_last_dim(&scores)
    } else {
        candle_nn::ops::softmax(&scores, D::Minus1)
    }
}

/// GELU, tanh approximation (FLUX's MLPs).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(x) {
        return crate::fused::gelu(x);
    }
    x.gelu()
}

/// Two linears with SiLU between (`in_layer`, `out_layer`).
#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    /// Loads `in_layer` and `out_layer`.
    pub fn new(in_sz: usize, h_sz: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            in_layer: candle_nn::linear(in_sz, h_sz, vb.pp("in_layer"))?,
            out_layer: candle_nn::linear(h_sz, h_sz, vb.pp("out_layer"))?,
        })
    }
}

impl Module for MlpEmbedder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(&self.out_layer, &linear(&self.in_layer, x)?.silu()?)
    }
}

/// Shift, scale and gate from the conditioning vector.
#[derive(Debug, Clone)]
pub struct ModulationOut {
    /// Added after normalisation.
    pub shift: Tensor,
    /// Multiplies (1 + scale) after normalisation.
    pub scale: Tensor,
    /// Multiplies the residual branch.
    pub gate: Tensor,
}

impl ModulationOut {
    /// `(1 + scale) · x + shift`.
    pub fn modulate(&self, x: &Tensor) -> Result<Tensor> {
        if crate::fused::applies(x) && crate::fused::applies(&self.scale) {
            return crate::fused::modulate(x, &self.scale, &self.shift);
        }
        x.broadcast_mul(&(&self.scale + 1.0)?)?
            .broadcast_add(&self.shift)
    }

    /// `x + gate · y`: a gated residual.
    pub fn gate_add(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let fused = crate::fused::applies;
        if fused(x) && fused(y) && fused(&self.gate) {
            return crate::fused::gate_add(x, &self.gate, y);
        }
        x + self.gate.broadcast_mul(y)?
    }
}

/// Outputs `start..start + len` of `l(x)`, computing only those: the weight rows are sliced
/// rather than the (much larger) output, whose narrow would pad its gradient to full width.
pub fn linear_part(l: &Linear, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    let w = l.weight().narrow(0, start, len)?;
    let b = l.bias().map(|b| b.narrow(0, start, len)).transpose()?;
    linear(&Linear::new(w, b), x)
}

/// `l(x)`; on the fused path, one matmul over all rows and a bias add whose gradient is a
/// single column sum.
pub fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let fused = crate::fused::applies;
    match l.bias() {
        Some(b) if fused(x) && fused(b) && fused(l.weight()) => {
            let w = l.weight();
            let mut dims = x.dims().to_vec();
            let inp = dims.pop().unwrap_or(1);
            let y = x.reshape(((), inp))?.matmul(&w.t()?)?;
            dims.push(w.dim(0)?);
            crate::fused::add_bias(&y, b)?.reshape(dims)
        }
        _ => l.forward(x),
    }
}

/// `lin(silu(vec))` split into one or two (shift, scale, gate) triples.
#[derive(Debug, Clone)]
pub struct Modulation {
    /// The projection (LoRA-capable for the layout branch).
    pub lin: LoraLinear,
    double: bool,
}

impl Modulation {
    /// Loads `lin` with 3 or 6 outputs per hidden unit.
    pub fn new(dim: usize, double: bool, vb: VarBuilder) -> Result<Self> {
        let mult = if double { 6 } else { 3 };
        Ok(Self {
            lin: LoraLinear::plain(candle_nn::linear(dim, mult * dim, vb.pp("lin"))?),
            double,
        })
    }

    /// The triples, each (B, 1, dim).
    pub fn forward(&self, vec: &Tensor) -> Result<Vec<ModulationOut>> {
        self.forward_lora(vec, false)
    }

    /// [`Self::forward`] with the LoRA update on or off.
    pub fn forward_lora(&self, vec: &Tensor, lora: bool) -> Result<Vec<ModulationOut>> {
        let out = self.lin.forward_lora(&vec.silu()?, lora)?.unsqueeze(1)?;
        let parts = out.chunk(if self.double { 6 } else { 3 }, D::Minus1)?;
        Ok(parts
            .chunks(3)
            .map(|c| ModulationOut {
                shift: c[0].clone(),
                scale: c[1].clone(),
                gate: c[2].clone(),
            })
            .collect())
    }
}

/// RMS norms on queries and keys (`query_norm.scale`, `key_norm.scale`).
#[derive(Debug, Clone)]
pub struct QkNorm {
    query: Tensor,
    key: Tensor,
}

impl QkNorm {
    /// Loads the two scales.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Const(1.0);
        Ok(Self {
            query: vb.get_with_hints(dim, "query_norm.scale", init)?,
            key: vb.get_with_hints(dim, "key_norm.scale", init)?,
        })
    }

    /// Normalises q and k.
    pub fn forward(&self, q: &Tensor, k: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            rms_norm(q, &self.query, 1e-6)?,
            rms_norm(k, &self.key, 1e-6)?,
        ))
    }
}

/// Splits fused q/k/v (B, L, 3·H·D) into three (B, H, L, D) tensors.
pub fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, l, three_hd) = qkv.dims3()?;
    let qkv = qkv
        .reshape((b, l, 3, heads, three_hd / 3 / heads))?
        .permute((2, 0, 3, 1, 4))?; // (3, B, H, L, D)
    Ok((qkv.get(0)?, qkv.get(1)?, qkv.get(2)?))
}

/// A linear layer that can carry a low-rank update: `base(x) + B·A·x` when the update is on.
/// The base is whatever its VarBuilder held (plain tensors from a checkpoint stay frozen:
/// they get no gradient); A and B come from their own VarBuilder, normally a trainable
/// `VarMap`. As in the official OcclusionFormer code the update has scale 1 (no α/r factor),
/// and B starts at zero so a fresh update changes nothing. As a `Module` the update is off.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// The frozen layer.
    pub base: Linear,
    ab: Option<(Tensor, Tensor)>,
}

impl LoraLinear {
    /// A layer without an update yet.
    pub fn plain(base: Linear) -> Self {
        Self { base, ab: None }
    }

    /// `base` with a rank-`rank` update under `vb` (see [`Self::attach`]).
    pub fn new(base: Linear, rank: usize, vb: VarBuilder) -> Result<Self> {
        let mut l = Self::plain(base);
        l.attach(rank, vb)?;
        Ok(l)
    }

    /// Adds the factors `lora_A.weight` (rank, in), uniform ±1/√in, and `lora_B.weight`
    /// (out, rank), zero.
    pub fn attach(&mut self, rank: usize, vb: VarBuilder) -> Result<()> {
        let (out, inp) = self.base.weight().dims2()?;
        let bound = 1.0 / (inp as f64).sqrt();
        let a = vb.get_with_hints(
            (rank, inp),
            "lora_A.weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb.get_with_hints((out, rank), "lora_B.weight", candle_nn::Init::Const(0.0))?;
        self.ab = Some((a, b));
        Ok(())
    }

    /// `base(x)`, plus the update when `on` and one is attached.
    pub fn forward_lora(&self, x: &Tensor, on: bool) -> Result<Tensor> {
        let y = linear(&self.base, x)?;
        match (&self.ab, on) {
            (Some((a, b)), true) => y + x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?,
            _ => Ok(y),
        }
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_lora(x, false)
    }
}
