//! OcclusionFormer's layout branch inside the DiT blocks (DESIGN.md §4.3, following the
//! official code's forward passes).
//!
//! In a block with a branch, the unchanged global block runs first (LoRA off). Then, with
//! LoRA on, every instance's packed sequence — its layout token, then the image tokens of its
//! box — goes through the block's own modulation, attention and projections; in a double block
//! the layout token takes the text stream's weights and the image tokens the image stream's.
//! The image outputs pass a zero-initialised projection (`layout_forward`), are scattered onto
//! per-instance canvases, and are composed by Z-order (`layout::compose`) into a residual. The
//! alignment head reads the same canvases.
//!
//! The `global` baselines run the same passes over per-scene regional sequences instead
//! ([`Regional`]): the canvas attends to itself and to the layout tokens of the boxes covering
//! each token, and the (zero-initialised) output is the residual itself, with no Z-order.

use crate::config::Config;
use crate::dit::{DoubleStreamBlock, Flux, FluxInput, SingleStreamBlock};
use crate::layers::{ModulationOut, layer_norm, rope};
use crate::layout::{Packing, ZHead, compose};
use crate::regional::Regional;
use candle_core::{D, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// The guidance the official branch embeds for layout passes (models with guidance input).
pub const LAYOUT_GUIDANCE: f64 = 10.0;

/// A block's layout-only modules: `layout_forward` (zero-initialised) and the Z-order head.
#[derive(Debug, Clone)]
pub struct LayoutParts {
    out: Linear,
    head: ZHead,
}

impl LayoutParts {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let zero = candle_nn::Init::Const(0.0);
        let out = Linear::new(
            vb.get_with_hints((h, h), "layout_forward.weight", zero)?,
            Some(vb.get_with_hints(h, "layout_forward.bias", zero)?),
        );
        Ok(Self {
            out,
            head: ZHead::new(h, vb)?,
        })
    }
}

/// What the layout branch needs for a batch.
#[derive(Debug, Clone, Copy)]
pub struct LayoutInput<'a> {
    /// Every instance of the batch, packed.
    pub packing: &'a Packing,
    /// Initial layout tokens (N, hidden), from `layout::LayoutNet`.
    pub tokens: &'a Tensor,
    /// Each instance's pooled caption (N, vec_in_dim).
    pub pooled: &'a Tensor,
    /// Soft box masks (N, Li).
    pub masks: &'a Tensor,
    /// Each instance's occluders: indices into 0..N, of the same scene.
    pub occluders: &'a [Vec<usize>],
    /// The image token grid (h, w).
    pub grid: (usize, usize),
    /// One density vector for every instance and time (the paper's "w/o learned σ"
    /// ablation): σ from the head's bias alone.
    pub static_sigma: bool,
    /// When given, the passes attend per scene with regional masks (the `global`
    /// baselines) instead of per instance, and nothing is composed.
    pub regional: Option<&'a Regional>,
    /// Record each layout token's attention map ([`BranchMaps::attention`]).
    pub attention_maps: bool,
    /// Record the alignment logits and composition weights ([`BranchMaps::logits`],
    /// [`BranchMaps::weights`]); sampling needs them at one step only, and the alignment
    /// CNN is a tenth of an 8-instance step.
    pub maps: bool,
}

/// What the layout blocks report besides the velocity, one entry per composing block.
#[derive(Debug, Default)]
pub struct BranchMaps {
    /// Alignment logits (N, Li, 2).
    pub logits: Vec<Tensor>,
    /// Composition weights (N, Li), averaged over channels; detached.
    pub weights: Vec<Tensor>,
    /// Each layout token's attention over its box on the canvas (N, Li), when asked for
    /// (the `attn-map-loss` ablation).
    pub attention: Vec<Tensor>,
}

/// The branch's state as it passes through the blocks.
pub(crate) struct LayoutState<'a> {
    input: &'a LayoutInput<'a>,
    /// Conditioning of the layout passes (B, hidden).
    temb: Tensor,
    /// e_i (N, hidden): time and the instance's pooled caption.
    embed: Tensor,
    scene_ids: Tensor,
    batch: usize,
    pe: (Tensor, Tensor),
    /// Layout tokens (N, 1, hidden).
    tokens: Tensor,
    /// The maps of each layout block so far.
    pub(crate) maps: BranchMaps,
}

impl<'a> LayoutState<'a> {
    pub(crate) fn new(
        flux: &Flux,
        x: &FluxInput,
        vec: &Tensor,
        input: &'a LayoutInput<'a>,
    ) -> Result<Self> {
        let pk = input.packing;
        let dev = vec.device();
        let batch = vec.dim(0)?;
        let scene: Vec<u32> = pk.scene.iter().map(|&s| s as u32).collect();
        let scene_ids = Tensor::from_vec(scene, pk.n, dev)?;
        let guided = flux.config().guidance_embed && x.guidance.is_some();
        let g = |n: usize| Tensor::full(LAYOUT_GUIDANCE as f32, n, dev)?.to_dtype(vec.dtype());
        let temb = if guided {
            flux.conditioning(x.timesteps, x.y, Some(&g(batch)?))?
        } else {
            vec.clone()
        };
        let t = x.timesteps.index_select(&scene_ids, 0)?;
        let embed = if guided {
            flux.conditioning(&t, input.pooled, Some(&g(pk.n)?))?
        } else {
            flux.conditioning(&t, input.pooled, None)?
        };
        let cfg = flux.config();
        Ok(Self {
            input,
            temb,
            embed,
            scene_ids,
            batch,
            pe: rope(
                input.regional.map_or(&pk.ids, |r| &r.ids),
                &cfg.axes_dim,
                cfg.theta,
            )?,
            tokens: input.tokens.unsqueeze(1)?.to_dtype(vec.dtype())?,
            maps: BranchMaps::default(),
        })
    }

    /// A modulation of the batch's scenes, per instance: (N, 1, hidden).
    fn per_instance(&self, m: &ModulationOut) -> Result<ModulationOut> {
        let pick = |t: &Tensor| t.contiguous()?.index_select(&self.scene_ids, 0);
        Ok(ModulationOut {
            shift: pick(&m.shift)?,
            scale: pick(&m.scale)?,
            gate: pick(&m.gate)?,
        })
    }

    /// A modulation for the pass's sequences: per instance, or per scene when regional.
    fn per_sequence(&self, m: &ModulationOut) -> Result<ModulationOut> {
        match self.input.regional {
            Some(_) => Ok(m.clone()),
            None => self.per_instance(m),
        }
    }

    /// Layout positions at the start of each sequence.
    fn prefix(&self) -> usize {
        self.input.regional.map_or(1, |r| r.slots)
    }

    /// Sequences of layout tokens (N, hidden) and canvases (B, Li, hidden).
    fn pack(&self, layout: &Tensor, img: &Tensor) -> Result<Tensor> {
        match self.input.regional {
            Some(r) => r.pack(layout, img),
            None => self.input.packing.pack(layout, img),
        }
    }

    /// Records the layout tokens' attention (per-instance route, when asked for) from the
    /// pass's q and k (N, H, 1 + len, Dh).
    fn record_attention(&mut self, q: &Tensor, k: &Tensor) -> Result<()> {
        if !self.input.attention_maps || self.input.regional.is_some() {
            return Ok(());
        }
        let pk = self.input.packing;
        let a = crate::layout::layout_attention(q, k, &self.pe, &pk.bias)?;
        let (canvas, _) = pk.unpack(&a.unsqueeze(2)?)?;
        self.maps.attention.push(canvas.squeeze(2)?);
        Ok(())
    }

    /// The attention bias of the sequences.
    fn bias(&self) -> &Tensor {
        self.input
            .regional
            .map_or(&self.input.packing.bias, |r| &r.bias)
    }

    /// Attention within the sequences: q, k, v (S, H, len, Dh) → (S, len, H·Dh).
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        match self.input.regional {
            Some(r) => r.attention(q, k, v, &self.pe),
            None => self.input.packing.attention(q, k, v, &self.pe),
        }
    }

    /// The image residual (B, Li, hidden) and the layout tokens' outputs (N, hidden) of the
    /// pass's output sequences: instance canvases composed by Z-order, or, when regional,
    /// the canvases themselves.
    fn residual(&mut self, parts: &LayoutParts, seq: &Tensor) -> Result<(Tensor, Tensor)> {
        match self.input.regional {
            Some(r) => r.unpack(seq),
            None => {
                let (canvases, lay) = self.input.packing.unpack(seq)?;
                Ok((self.compose(parts, &canvases)?, lay))
            }
        }
    }

    /// Densities and queries from e_i, the alignment logits (recorded), and the composed
    /// residual (B, Li, hidden) of instance canvases (N, Li, hidden).
    fn compose(&mut self, parts: &LayoutParts, canvases: &Tensor) -> Result<Tensor> {
        let (sigma, q) = parts.head.sigma_query(&self.embed)?;
        let sigma = if self.input.static_sigma {
            let (s0, _) = parts.head.sigma_query(&self.embed.zeros_like()?)?;
            s0
        } else {
            sigma
        };
        let i = self.input;
        if i.maps {
            self.maps
                .logits
                .push(parts.head.align_logits(canvases, &q, i.masks, i.grid)?);
        }
        let (z, w) = compose(
            canvases,
            &sigma,
            i.masks,
            i.occluders,
            &i.packing.scene,
            self.batch,
        )?;
        if i.maps {
            self.maps.weights.push(w.detach().mean(D::Minus1)?);
        }
        Ok(z)
    }
}

impl DoubleStreamBlock {
    /// LoRA on both streams' modulations, q/k/v and output projections and second MLP
    /// layers, and the layout modules.
    pub(crate) fn attach_layout(
        &mut self,
        cfg: &Config,
        rank: usize,
        vb: VarBuilder,
    ) -> Result<()> {
        let l = vb.pp("lora");
        self.img_mod.lin.attach(rank, l.pp("img_mod.lin"))?;
        self.txt_mod.lin.attach(rank, l.pp("txt_mod.lin"))?;
        self.img_attn.qkv.attach(rank, l.pp("img_attn.qkv"))?;
        self.img_attn.proj.attach(rank, l.pp("img_attn.proj"))?;
        self.txt_attn.qkv.attach(rank, l.pp("txt_attn.qkv"))?;
        self.txt_attn.proj.attach(rank, l.pp("txt_attn.proj"))?;
        self.img_mlp.l2.attach(rank, l.pp("img_mlp.2"))?;
        self.txt_mlp.l2.attach(rank, l.pp("txt_mlp.2"))?;
        self.layout = Some(LayoutParts::new(cfg, vb)?);
        Ok(())
    }

    /// The branch after the global block: image tokens (B, Li, hidden) in and out.
    pub(crate) fn layout_pass(
        &self,
        parts: &LayoutParts,
        img: &Tensor,
        st: &mut LayoutState,
    ) -> Result<Tensor> {
        let im = self.img_mod.forward_lora(&st.temb, true)?;
        let tm = self.txt_mod.forward_lora(&st.temb, true)?;
        let (lm0, lm1) = (st.per_instance(&tm[0])?, st.per_instance(&tm[1])?);
        let norm_img = im[0].modulate(&layer_norm(img)?)?;
        let norm_lay = lm0.modulate(&layer_norm(&st.tokens)?)?; // (N, 1, hidden)
        let seq = st.pack(&norm_lay.squeeze(1)?, &norm_img)?;
        let p = st.prefix();
        let len = seq.dim(1)? - p;
        let (lq, lk, lv) = self.txt_attn.qkv(&seq.narrow(1, 0, p)?, self.heads, true)?;
        let (iq, ik, iv) = self
            .img_attn
            .qkv(&seq.narrow(1, p, len)?, self.heads, true)?;
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 2);
        let (q, k) = (cat(&lq, &iq)?, cat(&lk, &ik)?);
        st.record_attention(&q, &k)?;
        let out = st.attention(&q, &k, &cat(&lv, &iv)?)?;
        let lay_out = self
            .txt_attn
            .proj
            .forward_lora(&out.narrow(1, 0, p)?, true)?;
        let img_out = parts.out.forward(
            &self
                .img_attn
                .proj
                .forward_lora(&out.narrow(1, p, len)?, true)?,
        )?;
        let (z, lay_out) = st.residual(parts, &Tensor::cat(&[&lay_out, &img_out], 1)?)?;
        let img = (img + im[0].gate.broadcast_mul(&z)?)?;
        let mlp = self
            .img_mlp
            .forward_lora(&im[1].modulate(&layer_norm(&img)?)?, true)?;
        let img = (&img + im[1].gate.broadcast_mul(&mlp)?)?;
        let lay = (&st.tokens + lm0.gate.broadcast_mul(&lay_out.unsqueeze(1)?)?)?;
        let mlp = self
            .txt_mlp
            .forward_lora(&lm1.modulate(&layer_norm(&lay)?)?, true)?;
        st.tokens = (&lay + lm1.gate.broadcast_mul(&mlp)?)?;
        Ok(img)
    }
}

impl SingleStreamBlock {
    /// LoRA on the modulation and both fused projections, and the layout modules.
    pub(crate) fn attach_layout(
        &mut self,
        cfg: &Config,
        rank: usize,
        vb: VarBuilder,
    ) -> Result<()> {
        let l = vb.pp("lora");
        self.modulation.lin.attach(rank, l.pp("modulation.lin"))?;
        self.linear1.attach(rank, l.pp("linear1"))?;
        self.linear2.attach(rank, l.pp("linear2"))?;
        self.layout = Some(LayoutParts::new(cfg, vb)?);
        Ok(())
    }

    /// The branch after the global block: image tokens (B, Li, hidden) in and out.
    pub(crate) fn layout_pass(
        &self,
        parts: &LayoutParts,
        img: &Tensor,
        st: &mut LayoutState,
    ) -> Result<Tensor> {
        let m = st.per_sequence(&self.modulation.forward_lora(&st.temb, true)?[0])?;
        let seq = st.pack(&st.tokens.squeeze(1)?, img)?;
        let (body, (q, k)) = self.body(
            &m.modulate(&layer_norm(&seq)?)?,
            &st.pe,
            Some(st.bias()),
            true,
        )?;
        st.record_attention(&q, &k)?;
        let out = m.gate.broadcast_mul(&body)?;
        let p = st.prefix();
        let img_out = parts.out.forward(&out.narrow(1, p, out.dim(1)? - p)?)?;
        let (z, lay_out) =
            st.residual(parts, &Tensor::cat(&[&out.narrow(1, 0, p)?, &img_out], 1)?)?;
        st.tokens = (&st.tokens + lay_out.unsqueeze(1)?)?;
        img + z
    }
}
