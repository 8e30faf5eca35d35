//! The Flux-style MM-DiT: double-stream blocks, single-stream blocks, final AdaLN layer.
//!
//! Port of black-forest-labs/flux `model.py` and `modules/layers.py` at any [`Config`];
//! `vb.pp` paths copy the BFL checkpoint's key names, so real weights load without renaming.

use crate::config::Config;
use crate::layers::{
    MlpEmbedder, Modulation, QkNorm, attention, layer_norm, rope, split_qkv, timestep_embedding,
};
use candle_core::{D, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// Attention projections of one stream (`qkv`, `norm`, `proj`).
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: candle_nn::linear_b(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            proj: candle_nn::linear(h, h, vb.pp("proj"))?,
        })
    }

    /// Normalised q, k and v, each (B, H, L, D).
    fn qkv(&self, x: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = split_qkv(&self.qkv.forward(x)?, heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        Ok((q, k, v.contiguous()?))
    }
}

/// The feed-forward of a double block (`0`, `2`: Linear, GELU-tanh, Linear).
#[derive(Debug, Clone)]
struct Mlp {
    l1: Linear,
    l2: Linear,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            l1: candle_nn::linear(cfg.hidden_size, cfg.mlp_hidden(), vb.pp("0"))?,
            l2: candle_nn::linear(cfg.mlp_hidden(), cfg.hidden_size, vb.pp("2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.l2.forward(&self.l1.forward(x)?.gelu()?)
    }
}

/// Image and text streams with their own weights, attending jointly.
#[derive(Debug, Clone)]
pub struct DoubleStreamBlock {
    img_mod: Modulation,
    img_attn: SelfAttention,
    img_mlp: Mlp,
    txt_mod: Modulation,
    txt_attn: SelfAttention,
    txt_mlp: Mlp,
    heads: usize,
}

impl DoubleStreamBlock {
    /// Loads `img_*` and `txt_*` (the norms have no parameters).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            img_mod: Modulation::new(cfg.hidden_size, true, vb.pp("img_mod"))?,
            img_attn: SelfAttention::new(cfg, vb.pp("img_attn"))?,
            img_mlp: Mlp::new(cfg, vb.pp("img_mlp"))?,
            txt_mod: Modulation::new(cfg.hidden_size, true, vb.pp("txt_mod"))?,
            txt_attn: SelfAttention::new(cfg, vb.pp("txt_attn"))?,
            txt_mlp: Mlp::new(cfg, vb.pp("txt_mlp"))?,
            heads: cfg.num_heads,
        })
    }

    /// One block: joint attention over [txt, img], then per-stream MLPs.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        pe: &(Tensor, Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let (im, tm) = (self.img_mod.forward(vec)?, self.txt_mod.forward(vec)?);
        let (iq, ik, iv) = self
            .img_attn
            .qkv(&im[0].modulate(&layer_norm(img)?)?, self.heads)?;
        let (tq, tk, tv) = self
            .txt_attn
            .qkv(&tm[0].modulate(&layer_norm(txt)?)?, self.heads)?;
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 2); // along L
        let attn = attention(&cat(&tq, &iq)?, &cat(&tk, &ik)?, &cat(&tv, &iv)?, pe)?; // (B, Lt+Li, H·D)
        let lt = txt.dim(1)?;
        let (t_attn, i_attn) = (
            attn.narrow(1, 0, lt)?,
            attn.narrow(1, lt, attn.dim(1)? - lt)?,
        );

        let img = (img
            + im[0]
                .gate
                .broadcast_mul(&self.img_attn.proj.forward(&i_attn)?)?)?;
        let img = (&img
            + im[1]
                .gate
                .broadcast_mul(&self.img_mlp.forward(&im[1].modulate(&layer_norm(&img)?)?)?)?)?;
        let txt = (txt
            + tm[0]
                .gate
                .broadcast_mul(&self.txt_attn.proj.forward(&t_attn)?)?)?;
        let txt = (&txt
            + tm[1]
                .gate
                .broadcast_mul(&self.txt_mlp.forward(&tm[1].modulate(&layer_norm(&txt)?)?)?)?)?;
        Ok((img, txt))
    }
}

/// One stream, attention and MLP in parallel from one fused projection.
#[derive(Debug, Clone)]
pub struct SingleStreamBlock {
    linear1: Linear,
    linear2: Linear,
    norm: QkNorm,
    modulation: Modulation,
    heads: usize,
    hidden: usize,
}

impl SingleStreamBlock {
    /// Loads `linear1`, `linear2`, `norm`, `modulation`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Ok(Self {
            linear1: candle_nn::linear(h, 3 * h + m, vb.pp("linear1"))?,
            linear2: candle_nn::linear(h + m, h, vb.pp("linear2"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            modulation: Modulation::new(h, false, vb.pp("modulation"))?,
            heads: cfg.num_heads,
            hidden: h,
        })
    }

    /// `x + gate · linear2([attn(q, k, v), gelu(mlp)])`.
    pub fn forward(&self, x: &Tensor, vec: &Tensor, pe: &(Tensor, Tensor)) -> Result<Tensor> {
        let m = &self.modulation.forward(vec)?[0];
        let fused = self.linear1.forward(&m.modulate(&layer_norm(x)?)?)?;
        let qkv = fused.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let mlp = fused.narrow(
            D::Minus1,
            3 * self.hidden,
            fused.dim(D::Minus1)? - 3 * self.hidden,
        )?;
        let (q, k, v) = split_qkv(&qkv, self.heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        let attn = attention(&q, &k, &v.contiguous()?, pe)?;
        let out = self
            .linear2
            .forward(&Tensor::cat(&[attn, mlp.gelu()?], D::Minus1)?)?;
        x + m.gate.broadcast_mul(&out)?
    }
}

/// Final AdaLN and projection back to token channels (`norm_final`, `linear`, `adaLN_modulation.1`).
#[derive(Debug, Clone)]
pub struct LastLayer {
    linear: Linear,
    ada: Linear,
}

impl LastLayer {
    /// Loads `linear` and `adaLN_modulation.1`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            linear: candle_nn::linear(h, cfg.in_channels, vb.pp("linear"))?,
            ada: candle_nn::linear(h, 2 * h, vb.pp("adaLN_modulation.1"))?,
        })
    }

    /// `linear((1 + scale) · norm(x) + shift)`.
    pub fn forward(&self, x: &Tensor, vec: &Tensor) -> Result<Tensor> {
        let m = self
            .ada
            .forward(&vec.silu()?)?
            .unsqueeze(1)?
            .chunk(2, D::Minus1)?;
        let (shift, scale) = (&m[0], &m[1]);
        self.linear.forward(
            &layer_norm(x)?
                .broadcast_mul(&(scale + 1.0)?)?
                .broadcast_add(shift)?,
        )
    }
}

/// The transformer: embed, double blocks, concatenate, single blocks, final layer.
#[derive(Debug, Clone)]
pub struct Flux {
    cfg: Config,
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_layer: LastLayer,
}

/// The inputs of one forward pass.
#[derive(Debug, Clone)]
pub struct FluxInput<'a> {
    /// Image tokens (B, Li, in_channels).
    pub img: &'a Tensor,
    /// Image RoPE ids (B, Li, 3): (layer, row, col).
    pub img_ids: &'a Tensor,
    /// Text tokens (B, Lt, context_in_dim).
    pub txt: &'a Tensor,
    /// Text RoPE ids (B, Lt, 3).
    pub txt_ids: &'a Tensor,
    /// Timesteps in [0, 1] (B,).
    pub timesteps: &'a Tensor,
    /// Pooled text (B, vec_in_dim).
    pub y: &'a Tensor,
    /// Distilled guidance scale (B,), for models trained with it.
    pub guidance: Option<&'a Tensor>,
}

impl Flux {
    /// Builds the model; checks the config first.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let h = cfg.hidden_size;
        Ok(Self {
            cfg: cfg.clone(),
            img_in: candle_nn::linear(cfg.in_channels, h, vb.pp("img_in"))?,
            txt_in: candle_nn::linear(cfg.context_in_dim, h, vb.pp("txt_in"))?,
            time_in: MlpEmbedder::new(256, h, vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(cfg.vec_in_dim, h, vb.pp("vector_in"))?,
            guidance_in: if cfg.guidance_embed {
                Some(MlpEmbedder::new(256, h, vb.pp("guidance_in"))?)
            } else {
                None
            },
            double_blocks: (0..cfg.depth)
                .map(|i| DoubleStreamBlock::new(cfg, vb.pp("double_blocks").pp(i)))
                .collect::<Result<_>>()?,
            single_blocks: (0..cfg.depth_single_blocks)
                .map(|i| SingleStreamBlock::new(cfg, vb.pp("single_blocks").pp(i)))
                .collect::<Result<_>>()?,
            final_layer: LastLayer::new(cfg, vb.pp("final_layer"))?,
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Predicts the flow velocity for the image tokens: (B, Li, in_channels).
    pub fn forward(&self, x: &FluxInput) -> Result<Tensor> {
        let mut vec = self
            .time_in
            .forward(&timestep_embedding(x.timesteps, 256)?)?;
        if let (Some(g_in), Some(g)) = (&self.guidance_in, x.guidance) {
            vec = (vec + g_in.forward(&timestep_embedding(g, 256)?)?)?;
        }
        let vec = (vec + self.vector_in.forward(x.y)?)?; // (B, hidden)
        let mut img = self.img_in.forward(x.img)?;
        let mut txt = self.txt_in.forward(x.txt)?;
        let pe = rope(
            &Tensor::cat(&[x.txt_ids, x.img_ids], 1)?,
            &self.cfg.axes_dim,
            self.cfg.theta,
        )?;
        for b in &self.double_blocks {
            (img, txt) = b.forward(&img, &txt, &vec, &pe)?;
        }
        let lt = txt.dim(1)?;
        let mut joint = Tensor::cat(&[&txt, &img], 1)?;
        for b in &self.single_blocks {
            joint = b.forward(&joint, &vec, &pe)?;
        }
        let img = joint.narrow(1, lt, joint.dim(1)? - lt)?;
        self.final_layer.forward(&img, &vec)
    }
}
