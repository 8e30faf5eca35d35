//! LaRender (DESIGN.md §4.2), the training-free baseline, on the frozen base model.
//!
//! Every scene becomes copies: its background (the global prompt over the whole canvas,
//! behind everything) and one per object (its caption over its box). In every block the
//! image tokens attend jointly with each copy's own text, giving one attention output R_c per
//! copy; these are composed by Z-order volume rendering ([`compose`]) with the user opacity α
//! as density σ = −ln(1 − α), scaled by N/(k + 1) at step k of N ("inverse proportional"),
//! and the composed output continues through the block as the single image stream. The text
//! streams stay per copy. Composition happens before the output projection, which is linear,
//! so it equals composing after it.

use crate::base::{BaseModel, SampleOptions};
use crate::dit::{DoubleStreamBlock, Flux, SingleStreamBlock};
use crate::layers::{attention, gelu, layer_norm, rope, split_qkv};
use crate::layout::compose;
use crate::layout_model::SceneLayout;
use crate::sampling::{denoise_steps, noise, schedule};
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::Module;

/// LaRender's default object opacity α.
pub const OPACITY: f64 = 0.8;

/// The copies of a batch of scenes: per scene its background, then its objects.
#[derive(Debug, Clone)]
pub struct Copies {
    /// The scene of each copy.
    pub scene: Vec<usize>,
    /// Prompt ids of each copy (C, Lt): the scene's prompt, or the object's caption.
    pub ids: Tensor,
    /// Each copy's encoded text (C, Lt, context), computed once: it does not change with
    /// the step.
    pub txt: Tensor,
    /// Soft masks (C, L): 1 everywhere for a background.
    pub masks: Tensor,
    /// Each copy's occluders (indices into 0..C); a background is behind its objects.
    pub occluders: Vec<Vec<usize>>,
}

impl Copies {
    /// Copies for `layouts` on a grid of `tokens` tokens, scene `b` with prompt `prompts[b]`.
    pub fn new(
        base: &BaseModel,
        prompts: &[&str],
        layouts: &[SceneLayout],
        tokens: usize,
        dev: &Device,
    ) -> Result<Self> {
        if prompts.len() != layouts.len() {
            candle_core::bail!("{} prompts for {} scenes", prompts.len(), layouts.len());
        }
        let (mut scene, mut texts, mut masks, mut occluders) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (b, (prompt, layout)) in prompts.iter().zip(layouts).enumerate() {
            let first = scene.len();
            let objects: Vec<usize> = (first + 1..first + 1 + layout.instances.len()).collect();
            scene.push(b);
            texts.push(*prompt);
            masks.extend(std::iter::repeat_n(1f32, tokens));
            occluders.push(objects);
            for inst in &layout.instances {
                if inst.soft.len() != tokens {
                    candle_core::bail!(
                        "a soft mask has {} tokens, the grid {tokens}",
                        inst.soft.len()
                    );
                }
                scene.push(b);
                texts.push(inst.caption.as_str());
                masks.extend_from_slice(&inst.soft);
                occluders.push(inst.occluders.iter().map(|&j| first + 1 + j).collect());
            }
        }
        let c = scene.len();
        let ids = base
            .tokenizer
            .batch(&texts, base.max_len, dev)
            .map_err(candle_core::Error::wrap)?;
        Ok(Self {
            txt: base.text.forward(&ids)?.0.detach(),
            ids,
            masks: Tensor::from_vec(masks, (c, tokens), dev)?,
            scene,
            occluders,
        })
    }

    fn scene_ids(&self, dev: &Device) -> Result<Tensor> {
        let s: Vec<u32> = self.scene.iter().map(|&s| s as u32).collect();
        Tensor::from_vec(s, self.scene.len(), dev)
    }
}

/// What the blocks need to mix the copies.
struct Mix<'a> {
    copies: &'a Copies,
    scene_ids: Tensor,
    batch: usize,
    sigma: f64,
}

impl Mix<'_> {
    /// Per-copy image attention outputs (C, L, D) composed into (B, L, D).
    fn compose(&self, r: &Tensor) -> Result<Tensor> {
        let (c, _, d) = r.dims3()?;
        let sigma = Tensor::full(self.sigma as f32, (c, d), r.device())?;
        let c = self.copies;
        Ok(compose(r, &sigma, &c.masks, &c.occluders, &c.scene, self.batch)?.0)
    }

    fn expand(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.index_select(&self.scene_ids, 0)
    }
}

impl DoubleStreamBlock {
    /// The block with one image stream (B, L, h) and per-copy text streams (C, Lt, h).
    fn forward_larender(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        vec_c: &Tensor,
        pe: &(Tensor, Tensor),
        mix: &Mix,
    ) -> Result<(Tensor, Tensor)> {
        let (im, tm) = (self.img_mod.forward(vec)?, self.txt_mod.forward(vec_c)?);
        let (iq, ik, iv) =
            self.img_attn
                .qkv(&im[0].modulate(&layer_norm(img)?)?, self.heads, false)?;
        let (tq, tk, tv) =
            self.txt_attn
                .qkv(&tm[0].modulate(&layer_norm(txt)?)?, self.heads, false)?;
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, &mix.expand(b)?], 2);
        let attn = attention(&cat(&tq, &iq)?, &cat(&tk, &ik)?, &cat(&tv, &iv)?, pe)?;
        let lt = txt.dim(1)?;
        let r = mix.compose(&attn.narrow(1, lt, attn.dim(1)? - lt)?)?;
        let img = (img + im[0].gate.broadcast_mul(&self.img_attn.proj.forward(&r)?)?)?;
        let mlp = self
            .img_mlp
            .forward_lora(&im[1].modulate(&layer_norm(&img)?)?, false)?;
        let img = (&img + im[1].gate.broadcast_mul(&mlp)?)?;
        let t_out = self.txt_attn.proj.forward(&attn.narrow(1, 0, lt)?)?;
        let txt = (txt + tm[0].gate.broadcast_mul(&t_out)?)?;
        let mlp = self
            .txt_mlp
            .forward_lora(&tm[1].modulate(&layer_norm(&txt)?)?, false)?;
        Ok((img, (&txt + tm[1].gate.broadcast_mul(&mlp)?)?))
    }
}

impl SingleStreamBlock {
    /// The block with one image stream (B, L, h) and per-copy text streams (C, Lt, h).
    fn forward_larender(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        vec_c: &Tensor,
        pe: &(Tensor, Tensor),
        mix: &Mix,
    ) -> Result<(Tensor, Tensor)> {
        let (m, mc) = (
            &self.modulation.forward(vec)?[0],
            &self.modulation.forward(vec_c)?[0],
        );
        let h = self.hidden;
        let fi = self.linear1.forward(&m.modulate(&layer_norm(img)?)?)?;
        let ft = self.linear1.forward(&mc.modulate(&layer_norm(txt)?)?)?;
        let split = |f: &Tensor| -> Result<(Tensor, Tensor)> {
            Ok((
                f.narrow(D::Minus1, 0, 3 * h)?,
                f.narrow(D::Minus1, 3 * h, f.dim(D::Minus1)? - 3 * h)?,
            ))
        };
        let ((qkv_i, mlp_i), (qkv_t, mlp_t)) = (split(&fi)?, split(&ft)?);
        let qkv = Tensor::cat(&[&qkv_t, &mix.expand(&qkv_i)?], 1)?;
        let (q, k, v) = split_qkv(&qkv, self.heads)?;
        let (q, k) = self.norm.forward(&q, &k)?;
        let attn = attention(&q, &k, &v.contiguous()?, pe)?;
        let lt = txt.dim(1)?;
        let r = mix.compose(&attn.narrow(1, lt, attn.dim(1)? - lt)?)?;
        let out_i = self
            .linear2
            .forward(&Tensor::cat(&[r, gelu(&mlp_i)?], D::Minus1)?)?;
        let out_t = self.linear2.forward(&Tensor::cat(
            &[attn.narrow(1, 0, lt)?, gelu(&mlp_t)?],
            D::Minus1,
        )?)?;
        Ok((
            (img + m.gate.broadcast_mul(&out_i)?)?,
            (txt + mc.gate.broadcast_mul(&out_t)?)?,
        ))
    }
}

impl Flux {
    /// Velocity (B, L, in_channels) with LaRender's per-copy attention and composition at
    /// density `sigma`: image tokens `x` with ids `img_ids`, the global prompts' pooled text
    /// `y` (B, vec_in_dim), and the copies with their encoded texts.
    fn forward_larender(
        &self,
        x: &Tensor,
        img_ids: &Tensor,
        t: &Tensor,
        y: &Tensor,
        copies: &Copies,
        sigma: f64,
    ) -> Result<Tensor> {
        let dev = x.device();
        let mix = Mix {
            copies,
            scene_ids: copies.scene_ids(dev)?,
            batch: x.dim(0)?,
            sigma,
        };
        let vec = self.conditioning(t, y, None)?;
        let vec_c = mix.expand(&vec)?;
        let mut img = self.img_in.forward(x)?;
        let mut txt = self.txt_in.forward(&copies.txt)?;
        let (c, lt, _) = txt.dims3()?;
        let ids = Tensor::cat(
            &[
                &Tensor::zeros((c, lt, 3), DType::F32, dev)?,
                &mix.expand(img_ids)?,
            ],
            1,
        )?;
        let pe = rope(&ids, &self.cfg.axes_dim, self.cfg.theta)?;
        for b in &self.double_blocks {
            (img, txt) = b.forward_larender(&img, &txt, &vec, &vec_c, &pe, &mix)?;
        }
        for b in &self.single_blocks {
            (img, txt) = b.forward_larender(&img, &txt, &vec, &vec_c, &pe, &mix)?;
        }
        self.final_layer.forward(&img, &vec)
    }
}

impl BaseModel {
    /// LaRender's velocity for latent tokens (B, L, C) at times t (B,), global prompt ids
    /// (B, Lt) and the scenes' copies, at density `sigma`.
    pub fn velocity_larender(
        &self,
        x: &Tensor,
        t: &Tensor,
        ids: &Tensor,
        copies: &Copies,
        sigma: f64,
        grid: (usize, usize),
    ) -> Result<Tensor> {
        let dev = x.device();
        let (_, y) = self.text.forward(ids)?;
        let img_ids = Self::image_ids(x.dim(0)?, grid.0, grid.1, dev)?;
        self.dit.forward_larender(x, &img_ids, t, &y, copies, sigma)
    }

    /// Samples latent tokens (B, L, C) with LaRender on every step, object opacity
    /// `opacity`, density scaled by N/(k + 1) at step k; no guidance.
    pub fn sample_larender(
        &self,
        ids: &Tensor,
        copies: &Copies,
        grid: (usize, usize),
        channels: usize,
        opts: &SampleOptions,
        opacity: f64,
    ) -> Result<Tensor> {
        let dev = ids.device();
        let n = ids.dim(0)?;
        let sigma0 = -(1.0 - opacity.clamp(1e-6, 1.0 - 1e-6)).ln();
        let times = schedule(opts.steps, grid.0 * grid.1, true);
        let field = |x: &Tensor, t: f64, k: usize| -> Result<Tensor> {
            let sigma = sigma0 * opts.steps as f64 / (k + 1) as f64;
            let tt = Tensor::full(t as f32, n, dev)?;
            self.velocity_larender(x, &tt, ids, copies, sigma, grid)
        };
        denoise_steps(
            field,
            noise((n, grid.0 * grid.1, channels), opts.seed, dev)?,
            &times,
        )
    }
}
