//! Stage 2 (DESIGN.md §4.3): the base model, frozen, plus a trainable layout branch.
//! `L = L_flow + 0.5·L_align`; sampling runs the branch for the first `grounding_ratio` of
//! the steps only.

use crate::base::{BaseModel, SampleOptions};
use crate::branch::{BranchMaps, LayoutInput};
use crate::dit::FluxInput;
use crate::inpaint::{Known, denoise_known};
use crate::layout::{LayoutNet, align_loss, attention_map_loss};
pub use crate::layout_batch::{InstanceLayout, Prepared, RANK_LEVELS, SceneLayout};
use crate::sampling::{guided, noise, schedule, training_draw};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use std::cell::RefCell;

/// The weight of the alignment loss.
pub const ALIGN_WEIGHT: f64 = 0.5;
/// The official grounding ratio: the branch runs for the first 30% of the sampling steps.
pub const OFFICIAL_GROUNDING_RATIO: f64 = 0.3;
/// How sampling applies the branch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grounding {
    /// The share of the Euler steps, the first ones, that run the branch.
    pub ratio: f64,
    /// Layout guidance λ on those steps: `v_base + λ·(v_branch − v_base)`, both with the
    /// global prompt, so λ > 1 pushes further in the direction the branch moves the base
    /// (its boxes and order). 1 takes the branch's velocity as it is and costs no extra pass;
    /// any other value adds one base pass per grounded step.
    pub guidance: f64,
    /// Order guidance μ on those steps: adds `μ·(v_branch − v_branch,reversed)`, the branch
    /// with every declared occlusion reversed as the reference, so only what the order
    /// changes is amplified. 0 is none; any other value adds one branch pass per grounded
    /// step. It acts through the Z-order composition: a scene without declared occlusions is
    /// drawn bit for bit as without it.
    pub order: f64,
    /// The share of the steps, the first ones, on which λ and μ act; the grounded steps
    /// after them take the branch's velocity as it is, without the guidance's extra passes:
    /// a speed option, since the order is not settled by the first steps alone (the bundled
    /// branch keeps most, not all, of the guidance's gain on a quarter of the steps;
    /// docs/layout.md). 1 guides every grounded step.
    pub guided: f64,
}

impl Grounding {
    /// The branch on the first `ratio` of the steps, without layout or order guidance.
    pub fn ratio(ratio: f64) -> Self {
        Self {
            ratio,
            guidance: 1.0,
            order: 0.0,
            guided: 1.0,
        }
    }

    /// What applies on step `k` of `steps`: itself within the guided share of the steps,
    /// else the same ratio without layout or order guidance.
    pub fn at(self, k: usize, steps: usize) -> Self {
        if k < (self.guided * steps as f64).ceil() as usize {
            self
        } else {
            Self {
                guidance: 1.0,
                order: 0.0,
                ..self
            }
        }
    }
}

/// Which method the layout branch runs: the full method or one of the paper's ablations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The full method.
    Occlusionformer,
    /// σ shared by every instance and time (no learned per-instance density).
    StaticSigma,
    /// No alignment loss.
    NoAlign,
    /// Alignment against visible instead of amodal masks (a data choice; the model is the
    /// full one).
    VisibleMasks,
    /// EliGen/GLIGEN-like: layout tokens join a canvas-wide attention with regional masks;
    /// no instance layers, no Z-order, no alignment head.
    Global,
    /// `global` plus a learned embedding of each instance's depth level added to its layout
    /// token: the strongest implicit-order baseline.
    GlobalRank,
    /// The mask loss on the layout tokens' attention maps instead of the query head: the
    /// share of each token's attention outside its amodal mask, weight 0.5.
    AttnMapLoss,
}

impl Variant {
    /// Every variant, in the order tables list them.
    pub const ALL: [Variant; 7] = [
        Variant::Occlusionformer,
        Variant::Global,
        Variant::GlobalRank,
        Variant::StaticSigma,
        Variant::NoAlign,
        Variant::VisibleMasks,
        Variant::AttnMapLoss,
    ];

    /// The name on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Occlusionformer => "occlusionformer",
            Variant::StaticSigma => "static-sigma",
            Variant::NoAlign => "no-align",
            Variant::VisibleMasks => "visible-masks",
            Variant::Global => "global",
            Variant::GlobalRank => "global-rank",
            Variant::AttnMapLoss => "attn-map-loss",
        }
    }

    /// Whether it attends per scene with regional masks instead of composing instances.
    pub fn regional(self) -> bool {
        matches!(self, Variant::Global | Variant::GlobalRank)
    }

    /// The alignment loss weight it trains with (0 where there is no alignment head).
    pub fn align_weight(self) -> f64 {
        if matches!(self, Variant::NoAlign | Variant::AttnMapLoss) || self.regional() {
            0.0
        } else {
            ALIGN_WEIGHT
        }
    }
}

// Here rather than in `layout_batch`, which knows nothing of the method's variants.
impl Prepared {
    /// The branch's input, with layout tokens `tokens` (N, hidden) made from these captions
    /// and boxes.
    pub fn input<'a>(&'a self, tokens: &'a Tensor, variant: Variant) -> LayoutInput<'a> {
        LayoutInput {
            packing: &self.packing,
            tokens,
            pooled: &self.pooled,
            masks: &self.masks,
            occluders: &self.occluders,
            grid: self.grid_size(),
            static_sigma: variant == Variant::StaticSigma,
            regional: self.regional.as_ref(),
            attention_maps: variant == Variant::AttnMapLoss,
            maps: true,
        }
    }
}

/// The frozen base with the layout branch.
pub struct LayoutModel {
    /// The base model (its weights are plain tensors: frozen).
    pub base: BaseModel,
    /// Layout tokens from captions and boxes.
    pub net: LayoutNet,
    /// The method.
    pub variant: Variant,
    /// The grounding ratio sampling uses unless told otherwise (a model file's
    /// `grounding_ratio`, else the official value).
    pub grounding_ratio: f64,
    /// The layout guidance sampling uses (a model file's `layout_guidance`, else 1: none);
    /// see [`Grounding::guidance`].
    pub layout_guidance: f64,
    /// The order guidance sampling uses (a model file's `order_guidance`, else 0: none); see
    /// [`Grounding::order`].
    pub order_guidance: f64,
    /// The share of the steps with layout and order guidance (a model file's `guided_ratio`,
    /// else 1: every grounded step); see [`Grounding::guided`].
    pub guided_ratio: f64,
    /// `global-rank`'s depth-level embedding (`rank_embed`).
    rank_embed: Option<candle_nn::Embedding>,
}

impl LayoutModel {
    /// Attaches a rank-`rank` branch for `variant` to blocks `double` and `single` of `base`,
    /// with every new parameter under `vb` (normally a fresh `VarMap`).
    pub fn new(
        mut base: BaseModel,
        double: &[usize],
        single: &[usize],
        rank: usize,
        variant: Variant,
        vb: VarBuilder,
    ) -> Result<Self> {
        base.dit.attach_layout(double, single, rank, vb.clone())?;
        let cfg = base.dit.config();
        let net = LayoutNet::new(cfg.vec_in_dim, cfg.hidden_size, vb.pp("layout_net"))?;
        let rank_embed = (variant == Variant::GlobalRank)
            .then(|| candle_nn::embedding(RANK_LEVELS, cfg.hidden_size, vb.pp("rank_embed")))
            .transpose()?;
        Ok(Self {
            base,
            net,
            variant,
            grounding_ratio: OFFICIAL_GROUNDING_RATIO,
            layout_guidance: 1.0,
            order_guidance: 0.0,
            guided_ratio: 1.0,
            rank_embed,
        })
    }

    /// Tensors for a batch of scene layouts on `grid`, the captions pooled by the base's
    /// text encoder.
    pub fn prepare(
        &self,
        scenes: &[SceneLayout],
        grid: (usize, usize),
        dev: &Device,
    ) -> Result<Prepared> {
        let captions: Vec<&str> = scenes
            .iter()
            .flat_map(|s| s.instances.iter().map(|i| i.caption.as_str()))
            .collect();
        if captions.is_empty() {
            candle_core::bail!("no instances in the batch");
        }
        let ids = self
            .base
            .tokenizer
            .batch(&captions, self.base.max_len, dev)
            .map_err(candle_core::Error::wrap)?;
        let (_, pooled) = self.base.text.forward(&ids)?;
        Prepared::new(scenes, grid, pooled.detach(), self.variant.regional())
    }

    /// The ratio, layout and order guidance its file records (or the defaults).
    pub fn grounding(&self) -> Grounding {
        Grounding {
            ratio: self.grounding_ratio,
            guidance: self.layout_guidance,
            order: self.order_guidance,
            guided: self.guided_ratio,
        }
    }

    /// Velocity with the branch (B, L, C), and the maps of each layout block.
    pub fn velocity(
        &self,
        x: &Tensor,
        t: &Tensor,
        ids: &Tensor,
        p: &Prepared,
    ) -> Result<(Tensor, BranchMaps)> {
        self.velocity_maps(x, t, ids, p, true)
    }

    /// The branch's velocity `v` at `x`, `t` for layouts `p` under `g`'s layout and order
    /// guidance ([`Grounding`]): `v` itself at λ = 1 and μ = 0.
    pub fn layout_guided(
        &self,
        v: Tensor,
        x: &Tensor,
        t: &Tensor,
        ids: &Tensor,
        p: &Prepared,
        g: Grounding,
    ) -> Result<Tensor> {
        let order = if g.order == 0.0 {
            None
        } else {
            Some(((&v - self.velocity_only(x, t, ids, &p.reversed())?)? * g.order)?)
        };
        let v = if g.guidance == 1.0 {
            v
        } else {
            let base = self.base.velocity(x, t, ids, p.grid_size())?.detach();
            guided(&v, &base, g.guidance)?
        };
        match order {
            Some(o) => v + o,
            None => Ok(v),
        }
    }

    /// [`Self::velocity`] alone: the alignment head is not run and no maps are kept.
    pub fn velocity_only(
        &self,
        x: &Tensor,
        t: &Tensor,
        ids: &Tensor,
        p: &Prepared,
    ) -> Result<Tensor> {
        Ok(self.velocity_maps(x, t, ids, p, false)?.0)
    }

    /// The velocity, with the branch's maps when `maps`.
    fn velocity_maps(
        &self,
        x: &Tensor,
        t: &Tensor,
        ids: &Tensor,
        p: &Prepared,
        maps: bool,
    ) -> Result<(Tensor, BranchMaps)> {
        let (b, lt) = ids.dims2()?;
        let dev = x.device();
        let (txt, y) = self.base.text.forward(ids)?;
        let mut tokens = self.net.forward(&p.pooled, &p.points)?;
        if let Some(e) = &self.rank_embed {
            tokens = (tokens + e.forward(&p.levels)?)?;
        }
        let input = LayoutInput {
            maps,
            ..p.input(&tokens, self.variant)
        };
        self.base.dit.forward_layout(
            &FluxInput {
                img: x,
                img_ids: &BaseModel::image_ids(b, p.grid_size().0, p.grid_size().1, dev)?,
                txt: &txt,
                txt_ids: &Tensor::zeros((b, lt, 3), DType::F32, dev)?,
                timesteps: t,
                y: &y,
                guidance: None,
            },
            Some(&input),
        )
    }

    /// `(L_flow + w·L_align, L_flow, L_align)`, w = 0.5 (0 for `no-align`; for
    /// `attn-map-loss`, L_align is the attention-map loss), on latent tokens `x0` (B, L, C) with global
    /// prompt ids (B, Lt); `seed` draws the noise and times. Needs amodal targets.
    pub fn loss(
        &self,
        x0: &Tensor,
        ids: &Tensor,
        p: &Prepared,
        seed: u64,
    ) -> Result<(Tensor, f32, f32)> {
        let Some(amodal) = &p.amodal else {
            candle_core::bail!("the alignment loss needs every instance's amodal mask");
        };
        let dev = x0.device();
        let (xt, t, v) = training_draw(x0, seed)?;
        let (pred, maps) = self.velocity(&xt, &t, ids, p)?;
        if self.variant == Variant::AttnMapLoss {
            let flow = (pred - v)?.sqr()?.mean_all()?;
            let mut attn = Tensor::zeros((), DType::F32, dev)?;
            for a in &maps.attention {
                attn = (attn + attention_map_loss(a, amodal)?)?;
            }
            let attn = (attn / maps.attention.len().max(1) as f64)?;
            let total = (&flow + (&attn * ALIGN_WEIGHT)?)?;
            return Ok((total, flow.to_scalar()?, attn.to_scalar()?));
        }
        let logits = maps.logits;
        let flow = (pred - v)?.sqr()?.mean_all()?;
        let mut align = Tensor::zeros((), DType::F32, dev)?;
        for l in &logits {
            align = (align + align_loss(l, amodal)?)?;
        }
        if !logits.is_empty() {
            align = (align / logits.len() as f64)?;
        }
        let total = (&flow + (&align * self.variant.align_weight())?)?;
        Ok((total, flow.to_scalar()?, align.to_scalar()?))
    }

    /// Samples latent tokens (B, L, C), one per prompt row, with the branch on for the first
    /// `grounding_ratio` of the steps (at least one when the ratio is positive).
    /// Classifier-free guidance compares against the empty prompt without the branch.
    pub fn sample(
        &self,
        ids: &Tensor,
        p: &Prepared,
        channels: usize,
        opts: &SampleOptions,
        g: Grounding,
    ) -> Result<Tensor> {
        Ok(self.sample_maps(ids, p, channels, opts, g, None)?.0)
    }

    /// [`Self::sample`], also returning the instances' maps at the last grounded step (none
    /// when no step is grounded, or for the `global` variants, which have no instance layers),
    /// keeping a known latent where asked ([`Known`]).
    pub fn sample_maps(
        &self,
        ids: &Tensor,
        p: &Prepared,
        channels: usize,
        opts: &SampleOptions,
        g: Grounding,
        known: Option<&Known>,
    ) -> Result<(Tensor, Option<InstanceMaps>)> {
        let dev = ids.device();
        let n = ids.dim(0)?;
        let grid = p.grid_size();
        let times = schedule(opts.steps, grid.0 * grid.1, true);
        let grounded = ((g.ratio * opts.steps as f64).ceil() as usize).min(opts.steps);
        let last = RefCell::new(None);
        let empty = Tensor::zeros((n, 1), DType::U32, dev)?;
        let field = |x: &Tensor, t: f64, k: usize| -> Result<Tensor> {
            let tt = Tensor::full(t as f32, n, dev)?;
            let vc = if k < grounded {
                let v = if k + 1 == grounded {
                    let (v, maps) = self.velocity(x, &tt, ids, p)?;
                    *last.borrow_mut() = InstanceMaps::new(&maps)?;
                    v
                } else {
                    self.velocity_only(x, &tt, ids, p)?
                };
                self.layout_guided(v, x, &tt, ids, p, g.at(k, opts.steps))?
            } else {
                self.base.velocity(x, &tt, ids, grid)?
            };
            if opts.guidance <= 1.0 {
                return Ok(vc);
            }
            let vu = self.base.velocity(x, &tt, &empty, grid)?;
            guided(&vc, &vu, opts.guidance)
        };
        let tokens = denoise_known(
            field,
            noise((n, grid.0 * grid.1, channels), opts.seed, dev)?,
            &times,
            known,
        )?;
        Ok((tokens, last.into_inner()))
    }
}

/// Per-instance maps on the token grid, averaged over the layout blocks.
#[derive(Debug, Clone)]
pub struct InstanceMaps {
    /// The alignment head's amodal-mask probability (N, L).
    pub masks: Tensor,
    /// Composition weight w_i (N, L): how much of each token instance i supplies.
    pub weights: Tensor,
}

impl InstanceMaps {
    /// The block average of `maps`; `None` when no block composed.
    fn new(maps: &BranchMaps) -> Result<Option<Self>> {
        if maps.logits.is_empty() {
            return Ok(None);
        }
        let mean = |ts: &[Tensor]| -> Result<Tensor> {
            (Tensor::stack(ts, 0)?.mean(0)?).detach().contiguous()
        };
        let probs: Vec<Tensor> = maps
            .logits
            .iter()
            .map(|l| {
                candle_nn::ops::softmax(l, candle_core::D::Minus1)?
                    .narrow(2, 1, 1)?
                    .squeeze(2)
            })
            .collect::<Result<_>>()?;
        Ok(Some(Self {
            masks: mean(&probs)?,
            weights: mean(&maps.weights)?,
        }))
    }
}
