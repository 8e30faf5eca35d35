//! The multi-task layer model (OmniAlpha's sequence-to-sequence DiT, DESIGN.md §4.5), tiny
//! preset: RGBA latents as frames on the RoPE layer axis, conditioned by a task token.
//!
//! A [`Sequence`] is a task and its frames. Each frame is one RGBA latent (the image, the
//! background plate, an instance's layer, …) given either as a condition (clean) or as a
//! target (denoised). Condition frames sit on the negative side of the layer axis and targets
//! on the positive side, as OmniAlpha's bi-directional MSRoPE has it; rows and columns are
//! the canvas's, so a layer token and the image token above the same pixels share them. An
//! instance's frame holds only the cells of its amodal box, so cost follows box area, and
//! carries the instance: its caption (a bag of words), its box and its depth level. Samples of
//! different lengths share a batch by padding, masked out of attention by a key bias.

use crate::config::Config;
use crate::dit::{LastLayer, SingleStreamBlock};
use crate::layers::{MlpEmbedder, rope, timestep_embedding};
use crate::sampling::{noise, training_draw};
use candle_core::{Device, Result, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};

/// What the model is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Image + scene → an amodal RGBA layer per instance and the background plate.
    Decompose,
    /// Image + an instance's box → its visible RGBA (the alpha is the matte).
    Matte,
    /// Image + an instance → the image without it.
    Remove,
    /// Some layers over the plate → the composed image.
    Complete,
}

impl Task {
    /// Every task, in token order.
    pub const ALL: [Task; 4] = [Task::Decompose, Task::Matte, Task::Remove, Task::Complete];

    fn index(self) -> u32 {
        Self::ALL.iter().position(|&t| t == self).unwrap_or(0) as u32
    }
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The flat image.
    Image,
    /// The background plate.
    Plate,
    /// An instance's amodal RGBA layer.
    Layer,
    /// An instance's visible RGBA.
    Matte,
    /// The image with an instance removed.
    Removed,
    /// Marks the instance a task is about (its cells, latents of the image).
    Marker,
}

const ROLES: usize = 6;

/// One frame of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// What it holds.
    pub role: Role,
    /// Denoised (true) or given (false).
    pub target: bool,
    /// Latent cells (row, column) it covers, row-major.
    pub cells: Vec<(usize, usize)>,
    /// Normalised latents at those cells, `cells.len() × channels`; zeros for a target at
    /// inference.
    pub latent: Vec<f32>,
    /// Caption word ids (empty for frames of no instance).
    pub words: Vec<u32>,
    /// Depth level of its instance (0: nothing in front), 0 for frames of no instance.
    pub level: usize,
    /// Its instance's amodal box (x1, y1, x2, y2) over the canvas side, or the whole canvas.
    pub bbox: [f32; 4],
}

impl Frame {
    /// A frame covering the whole `h × w` latent grid.
    pub fn full(role: Role, target: bool, latent: Vec<f32>, (h, w): (usize, usize)) -> Self {
        Self {
            role,
            target,
            cells: (0..h).flat_map(|r| (0..w).map(move |c| (r, c))).collect(),
            latent,
            words: Vec::new(),
            level: 0,
            bbox: [0.0, 0.0, 1.0, 1.0],
        }
    }
}

/// A task with its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The task.
    pub task: Task,
    /// Its frames, conditions and targets in any order.
    pub frames: Vec<Frame>,
}

impl Sequence {
    /// Tokens in the sequence.
    pub fn len(&self) -> usize {
        self.frames.iter().map(|f| f.cells.len()).sum()
    }

    /// Tokens in its target frames.
    pub fn target_tokens(&self) -> usize {
        self.frames
            .iter()
            .filter(|f| f.target)
            .map(|f| f.cells.len())
            .sum()
    }

    /// Whether it has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The layer model's shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OmniConfig {
    /// RGBA latent channels per token.
    pub latent: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Single-stream blocks.
    pub depth: usize,
    /// RoPE dimensions per axis (layer, row, col).
    pub axes_dim: [usize; 3],
    /// Caption vocabulary size.
    pub vocab: usize,
    /// Depth levels told apart (deeper ones share the last).
    pub levels: usize,
}

impl OmniConfig {
    /// The CPU preset: FLUX's single-stream blocks at the tiny DiT's width.
    pub fn tiny(latent: usize, vocab: usize) -> Self {
        Self {
            latent,
            hidden: 128,
            heads: 4,
            depth: 6,
            axes_dim: [8, 12, 12],
            vocab,
            levels: 8,
        }
    }

    /// The block shape, as the DiT's config.
    pub fn block(&self) -> Config {
        Config {
            in_channels: self.latent,
            hidden_size: self.hidden,
            num_heads: self.heads,
            depth: 0,
            depth_single_blocks: self.depth,
            axes_dim: self.axes_dim,
            ..Config::tiny()
        }
    }
}

/// Sequences as padded tensors, L the longest one's length.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Clean latents (B, L, C): the conditions' values and the targets' truth (or zeros).
    pub x0: Tensor,
    /// 1 on target tokens, 0 elsewhere (B, L, 1).
    pub target: Tensor,
    /// Key bias (B, 1, 1, L): 0 on tokens, −1e9 on padding.
    pub bias: Tensor,
    ids: Tensor,
    role: Tensor,
    level: Tensor,
    words: Tensor,
    bbox: Tensor,
    task: Tensor,
    /// Per sequence, per frame: its first token and token count.
    pub spans: Vec<Vec<(usize, usize)>>,
}

impl Batch {
    /// Packs `seqs` for a model of shape `cfg`; names the frame whose latent has the wrong
    /// length or whose word is outside the vocabulary.
    pub fn new(seqs: &[Sequence], cfg: &OmniConfig, dev: &Device) -> Result<Self> {
        let (b, c, v) = (seqs.len(), cfg.latent, cfg.vocab);
        let l = seqs.iter().map(Sequence::len).max().unwrap_or(0).max(1);
        let mut x0 = vec![0f32; b * l * c];
        let mut target = vec![0f32; b * l];
        let mut bias = vec![-1e9f32; b * l];
        let mut ids = vec![0f32; b * l * 3];
        let (mut role, mut level) = (vec![0u32; b * l], vec![0u32; b * l]);
        let mut words = vec![0f32; b * l * v];
        let mut bbox = vec![0f32; b * l * 4];
        let mut spans = Vec::with_capacity(b);
        for (i, s) in seqs.iter().enumerate() {
            let (mut at, mut conds, mut targets) = (0, 0i32, 0i32);
            let mut sp = Vec::with_capacity(s.frames.len());
            for (fi, f) in s.frames.iter().enumerate() {
                let n = f.cells.len();
                if f.latent.len() != n * c {
                    candle_core::bail!(
                        "frame {fi}: {} latent values for {n} cells of {c} channels",
                        f.latent.len()
                    );
                }
                let frame_id = if f.target {
                    targets += 1;
                    targets
                } else {
                    conds += 1;
                    -conds
                };
                let mut bag = vec![0f32; v];
                for &w in &f.words {
                    if w as usize >= v {
                        candle_core::bail!("frame {fi}: word id {w} outside the vocabulary of {v}");
                    }
                    bag[w as usize] += 1.0 / f.words.len() as f32;
                }
                let r = (f.role as usize + if f.target { ROLES } else { 0 }) as u32;
                for (k, &(row, col)) in f.cells.iter().enumerate() {
                    let t = i * l + at + k;
                    x0[t * c..(t + 1) * c].copy_from_slice(&f.latent[k * c..(k + 1) * c]);
                    target[t] = f.target as u8 as f32;
                    bias[t] = 0.0;
                    ids[t * 3..t * 3 + 3].copy_from_slice(&[
                        frame_id as f32,
                        row as f32,
                        col as f32,
                    ]);
                    role[t] = r;
                    level[t] = f.level.min(cfg.levels - 1) as u32;
                    words[t * v..(t + 1) * v].copy_from_slice(&bag);
                    bbox[t * 4..t * 4 + 4].copy_from_slice(&f.bbox);
                }
                sp.push((at, n));
                at += n;
            }
            spans.push(sp);
        }
        let task: Vec<u32> = seqs.iter().map(|s| s.task.index()).collect();
        Ok(Self {
            x0: Tensor::from_vec(x0, (b, l, c), dev)?,
            target: Tensor::from_vec(target, (b, l, 1), dev)?,
            bias: Tensor::from_vec(bias, (b, 1, 1, l), dev)?,
            ids: Tensor::from_vec(ids, (b, l, 3), dev)?,
            role: Tensor::from_vec(role, (b, l), dev)?,
            level: Tensor::from_vec(level, (b, l), dev)?,
            words: Tensor::from_vec(words, (b, l, v), dev)?,
            bbox: Tensor::from_vec(bbox, (b, l, 4), dev)?,
            task: Tensor::from_vec(task, b, dev)?,
            spans,
        })
    }

    /// The latents of frame `f` of sequence `i` in `x` (B, L, C): (cells, C).
    pub fn frame(&self, x: &Tensor, i: usize, f: usize) -> Result<Tensor> {
        let (at, n) = self.spans[i][f];
        x.get(i)?.narrow(0, at, n)
    }

    /// Conditions kept, targets taken from `targets` (B, L, C).
    pub fn with_targets(&self, targets: &Tensor) -> Result<Tensor> {
        let delta = (targets - &self.x0)?.broadcast_mul(&self.target)?;
        &self.x0 + delta
    }
}

/// The layer model.
#[derive(Debug, Clone)]
pub struct Omni {
    cfg: OmniConfig,
    img_in: Linear,
    role: Embedding,
    level: Embedding,
    words: Linear,
    bbox: MlpEmbedder,
    time_in: MlpEmbedder,
    task: Embedding,
    blocks: Vec<SingleStreamBlock>,
    final_layer: LastLayer,
}

impl Omni {
    /// Builds the model.
    pub fn new(cfg: &OmniConfig, vb: VarBuilder) -> Result<Self> {
        let block = cfg.block();
        block.validate().map_err(candle_core::Error::wrap)?;
        let h = cfg.hidden;
        Ok(Self {
            cfg: cfg.clone(),
            img_in: candle_nn::linear(cfg.latent, h, vb.pp("img_in"))?,
            role: candle_nn::embedding(2 * ROLES, h, vb.pp("role"))?,
            level: candle_nn::embedding(cfg.levels, h, vb.pp("level"))?,
            words: candle_nn::linear_no_bias(cfg.vocab, h, vb.pp("words"))?,
            bbox: MlpEmbedder::new(4, h, vb.pp("bbox"))?,
            time_in: MlpEmbedder::new(256, h, vb.pp("time_in"))?,
            task: candle_nn::embedding(Task::ALL.len(), h, vb.pp("task"))?,
            blocks: (0..cfg.depth)
                .map(|i| SingleStreamBlock::new(&block, vb.pp("single_blocks").pp(i)))
                .collect::<Result<_>>()?,
            final_layer: LastLayer::new(&block, vb.pp("final_layer"))?,
        })
    }

    /// The config.
    pub fn config(&self) -> &OmniConfig {
        &self.cfg
    }

    /// The flow velocity at every token (B, L, C) of latents `x` at times `t` (B,): targets at
    /// t, conditions clean.
    pub fn forward(&self, x: &Tensor, b: &Batch, t: &Tensor) -> Result<Tensor> {
        let tokens = (((self.img_in.forward(x)? + self.role.forward(&b.role)?)?
            + self.level.forward(&b.level)?)?
            + self.words.forward(&b.words)?)?;
        let mut h = (tokens + self.bbox.forward(&b.bbox)?)?;
        let vec =
            (self.time_in.forward(&timestep_embedding(t, 256)?)? + self.task.forward(&b.task)?)?;
        let pe = rope(&b.ids, &self.cfg.axes_dim, 10_000.0)?;
        for block in &self.blocks {
            h = block.forward_masked(&h, &vec, &pe, Some(&b.bias))?;
        }
        self.final_layer.forward(&h, &vec)
    }

    /// The flow-matching loss on target tokens, with times and noise drawn from `seed`.
    pub fn loss(&self, b: &Batch, seed: u64) -> Result<Tensor> {
        let (xt, t, v) = training_draw(&b.x0, seed)?;
        let pred = self.forward(&b.with_targets(&xt)?, b, &t)?;
        let err = (pred - v)?.sqr()?.broadcast_mul(&b.target)?;
        let count =
            (b.target.sum_all()?.to_scalar::<f32>()? as f64 * self.cfg.latent as f64).max(1.0);
        err.sum_all()? / count
    }

    /// Euler sampling of the targets along `times` (1 → 0) from noise of `seed`; the
    /// conditions stay as given. Returns every token's latents (B, L, C).
    pub fn sample(&self, b: &Batch, times: &[f64], seed: u64) -> Result<Tensor> {
        let eps = noise(b.x0.shape(), seed, b.x0.device())?;
        let mut x = b.with_targets(&eps)?;
        let n = b.x0.dim(0)?;
        for w in times.windows(2) {
            let t = Tensor::full(w[0] as f32, n, x.device())?;
            let v = self.forward(&x, b, &t)?;
            x = (x + v.broadcast_mul(&b.target)? * (w[1] - w[0]))?;
        }
        Ok(x)
    }
}
