//! The Flux-style MM-DiT: double-stream blocks, single-stream blocks, final AdaLN layer.
//!
//! Port of black-forest-labs/flux `model.py` and `modules/layers.py` at any [`Config`];
//! `vb.pp` paths copy the BFL checkpoint's key names, so real weights load without renaming.

use crate::branch::{BranchMaps, LayoutInput, LayoutParts, LayoutState};
use crate::config::Config;
use crate::layers::{
    LoraLinear, MlpEmbedder, Modulation, QkNorm, attend_stacked, gelu, layer_norm, linear,
    linear_part, qkv_heads, rope, split_qkv, timestep_embedding,
};
use candle_core::{D, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// Attention projections of one stream (`qkv`, `norm`, `proj`).
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    pub(crate) qkv: LoraLinear,
    pub(crate) norm: QkNorm,
    pub(crate) proj: LoraLinear,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: LoraLinear::plain(candle_nn::linear_b(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"))?),
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            proj: LoraLinear::plain(candle_nn::linear(h, h, vb.pp("proj"))?),
        })
    }

    /// Normalised q, k and v, each (B, H, L, D), with the LoRA update on or off.
    pub(crate) fn qkv(
        &self,
        x: &Tensor,
        heads: usize,
        lora: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (q, k, v) = split_qkv(&self.qkv.forward_lora(x, lora)?, heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        Ok((q, k, v.contiguous()?))
    }
}

/// The feed-forward of a double block (`0`, `2`: Linear, GELU-tanh, Linear).
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    l1: Linear,
    pub(crate) l2: LoraLinear,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            l1: candle_nn::linear(cfg.hidden_size, cfg.mlp_hidden(), vb.pp("0"))?,
            l2: LoraLinear::plain(candle_nn::linear(
                cfg.mlp_hidden(),
                cfg.hidden_size,
                vb.pp("2"),
            )?),
        })
    }

    /// `l2(gelu(l1(x)))`, with the LoRA update of `l2` on or off.
    pub(crate) fn forward_lora(&self, x: &Tensor, lora: bool) -> Result<Tensor> {
        self.l2.forward_lora(&gelu(&linear(&self.l1, x)?)?, lora)
    }
}

/// Image and text streams with their own weights, attending jointly.
#[derive(Debug, Clone)]
pub struct DoubleStreamBlock {
    pub(crate) img_mod: Modulation,
    pub(crate) img_attn: SelfAttention,
    pub(crate) img_mlp: Mlp,
    pub(crate) txt_mod: Modulation,
    pub(crate) txt_attn: SelfAttention,
    pub(crate) txt_mlp: Mlp,
    pub(crate) heads: usize,
    pub(crate) layout: Option<LayoutParts>,
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
            layout: None,
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
        let (lt, li) = (txt.dim(1)?, img.dim(1)?);
        // Each stream's heads, rotated by the angles of its span [a, a + n) of the sequence.
        let heads = |attn: &SelfAttention, x: &Tensor, a: usize, n: usize| {
            let (cos, sin) = (pe.0.narrow(2, a, n)?, pe.1.narrow(2, a, n)?);
            qkv_heads(&attn.qkv.forward(x)?, &attn.norm, (&cos, &sin), self.heads)
        };
        let th = heads(&self.txt_attn, &tm[0].modulate(&layer_norm(txt)?)?, 0, lt)?;
        let ih = heads(&self.img_attn, &im[0].modulate(&layer_norm(img)?)?, lt, li)?;
        // Text tokens first, as FLUX orders the joint sequence: (B, Lt+Li, H·D).
        let attn = attend_stacked(&Tensor::cat(&[&th, &ih], 3)?, None)?;
        let (t_attn, i_attn) = (
            attn.narrow(1, 0, lt)?,
            attn.narrow(1, lt, attn.dim(1)? - lt)?,
        );

        let img = im[0].gate_add(img, &self.img_attn.proj.forward(&i_attn)?)?;
        let img = im[1].gate_add(
            &img,
            &self
                .img_mlp
                .forward_lora(&im[1].modulate(&layer_norm(&img)?)?, false)?,
        )?;
        let txt = tm[0].gate_add(txt, &self.txt_attn.proj.forward(&t_attn)?)?;
        let txt = tm[1].gate_add(
            &txt,
            &self
                .txt_mlp
                .forward_lora(&tm[1].modulate(&layer_norm(&txt)?)?, false)?,
        )?;
        Ok((img, txt))
    }
}

/// One stream, attention and MLP in parallel from one fused projection.
#[derive(Debug, Clone)]
pub struct SingleStreamBlock {
    pub(crate) linear1: LoraLinear,
    pub(crate) linear2: LoraLinear,
    pub(crate) norm: QkNorm,
    pub(crate) modulation: Modulation,
    pub(crate) heads: usize,
    pub(crate) hidden: usize,
    pub(crate) layout: Option<LayoutParts>,
}

impl SingleStreamBlock {
    /// Loads `linear1`, `linear2`, `norm`, `modulation`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Ok(Self {
            linear1: LoraLinear::plain(candle_nn::linear(h, 3 * h + m, vb.pp("linear1"))?),
            linear2: LoraLinear::plain(candle_nn::linear(h + m, h, vb.pp("linear2"))?),
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            modulation: Modulation::new(h, false, vb.pp("modulation"))?,
            heads: cfg.num_heads,
            hidden: h,
            layout: None,
        })
    }

    /// `x + gate · linear2([attn(q, k, v), gelu(mlp)])`.
    pub fn forward(&self, x: &Tensor, vec: &Tensor, pe: &(Tensor, Tensor)) -> Result<Tensor> {
        self.forward_masked(x, vec, pe, None)
    }

    /// [`Self::forward`] with an additive attention bias (B, 1, 1, L) over keys: padded
    /// sequences of different lengths in one batch.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        vec: &Tensor,
        pe: &(Tensor, Tensor),
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let m = &self.modulation.forward(vec)?[0];
        let x_mod = m.modulate(&layer_norm(x)?)?;
        // The base path takes stacked heads; `body` keeps q and k before RoPE for the branch's
        // attention maps.
        let h3 = 3 * self.hidden;
        let l1 = &self.linear1.base;
        let qkv = linear_part(l1, &x_mod, 0, h3)?;
        let mlp = linear_part(l1, &x_mod, h3, l1.weight().dim(0)? - h3)?;
        let heads = qkv_heads(&qkv, &self.norm, (&pe.0, &pe.1), self.heads)?;
        let attn = attend_stacked(&heads, bias)?;
        let out = self
            .linear2
            .forward(&Tensor::cat(&[attn, gelu(&mlp)?], D::Minus1)?)?;
        m.gate_add(x, &out)
    }

    /// `linear2([attn(q, k, v), gelu(mlp)])` of normalised tokens, with an optional attention
    /// bias (packed sequences) and the LoRA updates on or off; also the normalised q and k.
    pub(crate) fn body(
        &self,
        x: &Tensor,
        pe: &(Tensor, Tensor),
        bias: Option<&Tensor>,
        lora: bool,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let fused = self.linear1.forward_lora(x, lora)?;
        let qkv = fused.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let mlp = fused.narrow(
            D::Minus1,
            3 * self.hidden,
            fused.dim(D::Minus1)? - 3 * self.hidden,
        )?;
        let (q, k, v) = split_qkv(&qkv, self.heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        let attn = crate::layers::masked_attention(&q, &k, &v.contiguous()?, pe, bias)?;
        let out = self
            .linear2
            .forward_lora(&Tensor::cat(&[attn, gelu(&mlp)?], D::Minus1)?, lora)?;
        Ok((out, (q, k)))
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
    pub(crate) cfg: Config,
    pub(crate) img_in: Linear,
    pub(crate) txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    pub(crate) double_blocks: Vec<DoubleStreamBlock>,
    pub(crate) single_blocks: Vec<SingleStreamBlock>,
    pub(crate) final_layer: LastLayer,
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

    /// The blocks' conditioning vector (B, hidden): time, optional distilled guidance, pooled
    /// text.
    pub(crate) fn conditioning(
        &self,
        t: &Tensor,
        y: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut vec = self.time_in.forward(&timestep_embedding(t, 256)?)?;
        if let (Some(g_in), Some(g)) = (&self.guidance_in, guidance) {
            vec = (vec + g_in.forward(&timestep_embedding(g, 256)?)?)?;
        }
        vec + self.vector_in.forward(y)?
    }

    /// Predicts the flow velocity for the image tokens: (B, Li, in_channels).
    pub fn forward(&self, x: &FluxInput) -> Result<Tensor> {
        Ok(self.forward_layout(x, None)?.0)
    }

    /// [`Self::forward`] with the layout branch in the blocks that have one (see
    /// [`Self::attach_layout`]) when `layout` is given; also returns each layout block's
    /// alignment logits and composition weights.
    pub fn forward_layout(
        &self,
        x: &FluxInput,
        layout: Option<&LayoutInput>,
    ) -> Result<(Tensor, BranchMaps)> {
        let vec = self.conditioning(x.timesteps, x.y, x.guidance)?; // (B, hidden)
        let mut img = self.img_in.forward(x.img)?;
        let mut txt = self.txt_in.forward(x.txt)?;
        let pe = rope(
            &Tensor::cat(&[x.txt_ids, x.img_ids], 1)?,
            &self.cfg.axes_dim,
            self.cfg.theta,
        )?;
        let mut state = match layout {
            Some(l) => Some(LayoutState::new(self, x, &vec, l)?),
            None => None,
        };
        for b in &self.double_blocks {
            (img, txt) = b.forward(&img, &txt, &vec, &pe)?;
            if let (Some(parts), Some(st)) = (&b.layout, state.as_mut()) {
                img = b.layout_pass(parts, &img, st)?;
            }
        }
        let lt = txt.dim(1)?;
        let mut joint = Tensor::cat(&[&txt, &img], 1)?;
        for b in &self.single_blocks {
            joint = b.forward(&joint, &vec, &pe)?;
            if let (Some(parts), Some(st)) = (&b.layout, state.as_mut()) {
                let img = joint.narrow(1, lt, joint.dim(1)? - lt)?;
                let img = b.layout_pass(parts, &img, st)?;
                joint = Tensor::cat(&[&joint.narrow(1, 0, lt)?, &img], 1)?;
            }
        }
        let img = joint.narrow(1, lt, joint.dim(1)? - lt)?;
        let maps = state.map(|s| s.maps).unwrap_or_default();
        Ok((self.final_layer.forward(&img, &vec)?, maps))
    }

    /// Gives blocks `double` and `single` a layout branch: rank-`rank` LoRA on their
    /// projections and modulations, a zero-initialised output projection and the Z-order
    /// head, all under `vb` (with the official key names, e.g. `double_blocks.0.lora.*`,
    /// `double_blocks.0.layout_forward`).
    pub fn attach_layout(
        &mut self,
        double: &[usize],
        single: &[usize],
        rank: usize,
        vb: VarBuilder,
    ) -> Result<()> {
        for &i in double {
            let Some(b) = self.double_blocks.get_mut(i) else {
                candle_core::bail!("no double block {i}: the model has {}", self.cfg.depth);
            };
            b.attach_layout(&self.cfg, rank, vb.pp("double_blocks").pp(i))?;
        }
        for &i in single {
            let Some(b) = self.single_blocks.get_mut(i) else {
                candle_core::bail!(
                    "no single block {i}: the model has {}",
                    self.cfg.depth_single_blocks
                );
            };
            b.attach_layout(&self.cfg, rank, vb.pp("single_blocks").pp(i))?;
        }
        Ok(())
    }
}
