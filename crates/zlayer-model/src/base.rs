//! The base text-to-image model: the MM-DiT on VAE latents, conditioned on the tiny text
//! encoder, trained jointly by rectified flow. The layout branch builds on it.

use crate::config::Config;
use crate::dit::{Flux, FluxInput};
use crate::inpaint::{Known, denoise_known};
use crate::sampling::{guided, noise, schedule, training_draw_shifted};
use crate::text::{TextConfig, TextEncoder, Tokenizer};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// Euler steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: none).
    pub guidance: f64,
    /// Noise seed.
    pub seed: u64,
}

/// How the flow loss draws and weighs its samples; the default is the plain loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossOptions<'a> {
    /// A weight per latent token (B, L), the squared errors averaged under it: tokens that show
    /// objects can count for more than the background around them. Uniform when absent.
    pub weights: Option<&'a Tensor>,
    /// μ of the shift applied to the logit-normal times (0: none; see
    /// [`crate::sampling::training_draw_shifted`]).
    pub time_mu: f64,
}

/// The DiT and its text encoder, with the tokenizer they were trained with. Cloning shares
/// the weights.
#[derive(Debug, Clone)]
pub struct BaseModel {
    /// The transformer.
    pub dit: Flux,
    /// The text encoder.
    pub text: TextEncoder,
    /// The vocabulary.
    pub tokenizer: Tokenizer,
    /// Longest prompt in tokens.
    pub max_len: usize,
}

impl BaseModel {
    /// Builds both under `dit.*` and `text.*`.
    pub fn new(
        dit: &Config,
        text: &TextConfig,
        tokenizer: Tokenizer,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            dit: Flux::new(dit, vb.pp("dit"))?,
            text: TextEncoder::new(text, vb.pp("text"))?,
            tokenizer,
            max_len: text.max_len,
        })
    }

    /// Image-token RoPE ids (B, h·w, 3): (0, row, col).
    pub fn image_ids(b: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
        let ids: Vec<f32> = (0..h * w)
            .flat_map(|p| [0.0, (p / w) as f32, (p % w) as f32])
            .collect();
        Tensor::from_vec(ids, (1, h * w, 3), dev)?.repeat((b, 1, 1))
    }

    /// Velocity for latents tokens (B, L, C) at times t (B,) given prompt ids (B, Lt).
    pub fn velocity(
        &self,
        x: &Tensor,
        t: &Tensor,
        ids: &Tensor,
        grid: (usize, usize),
    ) -> Result<Tensor> {
        let (b, lt) = ids.dims2()?;
        let dev = x.device();
        let (txt, y) = self.text.forward(ids)?;
        self.dit.forward(&FluxInput {
            img: x,
            img_ids: &Self::image_ids(b, grid.0, grid.1, dev)?,
            txt: &txt,
            txt_ids: &Tensor::zeros((b, lt, 3), DType::F32, dev)?,
            timesteps: t,
            y: &y,
            guidance: None,
        })
    }

    /// Multiply-add FLOPs (2 per MAC) of one forward pass over a batch of `b` images of
    /// `img` tokens with prompts of `txt` tokens, counting the matmuls only (the projections,
    /// MLPs and attention of the DiT and the text encoder); element-wise work is left out, so
    /// GFLOP/s from this count is the useful rate. A training step is about 3× this.
    pub fn forward_flops(dit: &Config, text: &TextConfig, b: usize, img: usize, txt: usize) -> f64 {
        let (h, l) = (dit.hidden_size as f64, (img + txt) as f64);
        let mlp = dit.mlp_hidden() as f64;
        // q, k, v, out and the MLP per token; QKᵀ and AV per pair of tokens.
        let per_token = 2.0 * (4.0 * h * h + 2.0 * h * mlp);
        let attention = 4.0 * l * l * h;
        let blocks = (dit.depth + dit.depth_single_blocks) as f64;
        let embed = 2.0
            * h
            * (img as f64 * 2.0 * dit.in_channels as f64 + txt as f64 * dit.context_in_dim as f64);
        let w = text.width as f64;
        let text_flops = text.layers as f64
            * (txt as f64 * 2.0 * (4.0 * w * w + 8.0 * w * w) + 4.0 * (txt * txt) as f64 * w);
        b as f64 * (blocks * (l * per_token + attention) + embed + text_flops)
    }

    /// The rectified-flow loss on latent tokens `x0` (B, L, C) with prompt ids; `seed` draws
    /// the noise and the logit-normal times.
    pub fn loss(
        &self,
        x0: &Tensor,
        ids: &Tensor,
        grid: (usize, usize),
        seed: u64,
    ) -> Result<Tensor> {
        self.loss_with(x0, ids, grid, seed, &LossOptions::default())
    }

    /// [`Self::loss`] drawn and weighed as `opts` says.
    pub fn loss_with(
        &self,
        x0: &Tensor,
        ids: &Tensor,
        grid: (usize, usize),
        seed: u64,
        opts: &LossOptions,
    ) -> Result<Tensor> {
        let (xt, t, v) = training_draw_shifted(x0, seed, opts.time_mu)?;
        let se = (self.velocity(&xt, &t, ids, grid)? - v)?.sqr()?;
        let Some(w) = opts.weights else {
            return se.mean_all();
        };
        let total = w.sum_all()?.to_scalar::<f32>()? as f64 * x0.dim(2)? as f64;
        se.broadcast_mul(&w.unsqueeze(2)?)?.sum_all()? / total
    }

    /// Samples latent tokens (B, h·w, C), one image per row of prompt ids (B, Lt): Euler over
    /// `opts.steps` with Flux's resolution shift, classifier-free guidance against the empty
    /// prompt when guidance > 1.
    pub fn sample(
        &self,
        ids: &Tensor,
        grid: (usize, usize),
        channels: usize,
        opts: &SampleOptions,
    ) -> Result<Tensor> {
        self.sample_known(ids, grid, channels, opts, None)
    }

    /// [`Self::sample`] keeping a known latent where asked ([`Known`]).
    pub fn sample_known(
        &self,
        ids: &Tensor,
        grid: (usize, usize),
        channels: usize,
        opts: &SampleOptions,
        known: Option<&Known>,
    ) -> Result<Tensor> {
        let SampleOptions {
            steps,
            guidance,
            seed,
        } = *opts;
        let dev = ids.device();
        let n = ids.dim(0)?;
        let cond = ids;
        let empty = Tensor::zeros((n, 1), DType::U32, dev)?;
        let times = schedule(steps, grid.0 * grid.1, true);
        let field = |x: &Tensor, t: f64, _: usize| -> Result<Tensor> {
            let tt = Tensor::full(t as f32, n, dev)?;
            let vc = self.velocity(x, &tt, cond, grid)?;
            if guidance <= 1.0 {
                return Ok(vc);
            }
            let vu = self.velocity(x, &tt, &empty, grid)?;
            guided(&vc, &vu, guidance)
        };
        denoise_known(
            field,
            noise((n, grid.0 * grid.1, channels), seed, dev)?,
            &times,
            known,
        )
    }
}
