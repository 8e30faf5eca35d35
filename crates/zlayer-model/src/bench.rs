//! The tiny model's training step as a benchmark, shared by `cargo bench --bench model` and
//! `zlayer bench-train`, and the peak sgemm it is set against. The same step is rebuilt in
//! PyTorch by `shared/tools/peer_train_step.py`: batch 16 of 16×16 latent tokens with 8
//! channels, one 17-token prompt, forward, backward, clipping, AdamW and EMA.

use crate::Config;
use crate::base::BaseModel;
use crate::optim::{AdamWConfig, Trainer};
use crate::sampling::noise;
use crate::text::{TextConfig, Tokenizer};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Samples per step.
pub const BATCH: usize = 16;
/// Latent tokens per side.
pub const GRID: usize = 16;
/// The prompt every sample carries (its words are the whole vocabulary).
pub const PROMPT: &str =
    "a red sphere , a blue striped cube and a green glass disk on a sky background";

/// The tiny base and its text encoder for [`PROMPT`], with fresh weights in `vm`.
pub fn tiny_model(vm: &VarMap, dev: &Device) -> Result<(BaseModel, TextConfig)> {
    let tok = Tokenizer::new(PROMPT.split(' ').collect::<Vec<_>>());
    let text = TextConfig::tiny(tok.len());
    let m = BaseModel::new(
        &Config::tiny(),
        &text,
        tok,
        VarBuilder::from_varmap(vm, DType::F32, dev),
    )?;
    Ok((m, text))
}

/// One training step, ready to run again and again.
pub struct TrainStep {
    model: BaseModel,
    trainer: Trainer,
    ids: Tensor,
    x0: Tensor,
    seed: u64,
    /// Matmul FLOPs one step counts (3× the forward's, as the peer counts them).
    pub flops: f64,
    /// Prompt tokens per sample.
    pub prompt_tokens: usize,
}

impl TrainStep {
    /// The model, its optimiser and a fixed batch.
    pub fn new(dev: &Device) -> Result<Self> {
        let vm = VarMap::new();
        let (model, text) = tiny_model(&vm, dev)?;
        let ids = model
            .tokenizer
            .batch(&vec![PROMPT; BATCH], text.max_len, dev)
            .map_err(candle_core::Error::wrap)?;
        let prompt_tokens = ids.dim(1)?;
        let x0 = noise((BATCH, GRID * GRID, 8), 3, dev)?;
        let trainer = Trainer::new(&vm, AdamWConfig::default(), 0.999)?;
        let flops = 3.0
            * BaseModel::forward_flops(&Config::tiny(), &text, BATCH, GRID * GRID, prompt_tokens);
        Ok(Self {
            model,
            trainer,
            ids,
            x0,
            seed: 0,
            flops,
            prompt_tokens,
        })
    }

    /// One step: the loss at fresh noise, backward, clip to 1, AdamW at 1e-4, EMA.
    pub fn run(&mut self) -> Result<()> {
        self.seed += 1;
        let loss = self
            .model
            .loss(&self.x0, &self.ids, (GRID, GRID), self.seed)?;
        self.trainer.step(&loss, 1e-4, 1.0)?;
        Ok(())
    }
}

/// The median of timings (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Two `n × n` matrices for the peak sgemm, through candle (and so the same gemm crate).
pub fn sgemm_inputs(n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    Ok((noise((n, n), 1, dev)?, noise((n, n), 2, dev)?))
}
