//! FLUX.1's text encoders and autoencoder, built from candle-transformers: T5 gives the prompt
//! sequence, CLIP-L the pooled vector (also per instance caption, for the layout tokens), and
//! the 16-channel VAE maps latents to pixels. Files are read as published on the Hugging Face
//! hub (`config.json` beside the weights; `tokenizer.json` given by path).

use crate::checkpoint::{Entry, header, weight_files};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig, ClipTextTransformer,
};
use candle_transformers::models::flux::autoencoder;
use candle_transformers::models::t5;
use std::collections::HashMap;
use std::path::Path;

/// FLUX.1-dev's T5 sequence length (`max_sequence_length`).
pub const T5_LEN: usize = 512;
/// CLIP's context length.
pub const CLIP_LEN: usize = 77;
/// The FLUX VAE's latent normalisation: `(z − shift)·scale`.
pub const FLUX_VAE_SHIFT: f64 = 0.1159;
/// See [`FLUX_VAE_SHIFT`].
pub const FLUX_VAE_SCALE: f64 = 0.3611;

fn tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, String> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| {
        format!(
            "{}: not a Hugging Face tokenizer.json ({e}); the model's repository has it",
            path.display()
        )
    })
}

/// A folder's `config.json` and its path.
fn config_json(dir: &Path) -> Result<(serde_json::Value, std::path::PathBuf), String> {
    let p = dir.join("config.json");
    Ok((crate::bundle::read_json(&p)?, p))
}

/// Memory-mapped weights of a folder (one file, or shards with their index).
fn mmap(dir: &Path, dtype: DType, dev: &Device) -> Result<VarBuilder<'static>, String> {
    let files = weight_files(dir)?;
    // SAFETY: the files are mapped read-only; zlayer never writes a model file it reads.
    unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, dev) }
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Token ids as a batch of one (1, L).
fn ids(ids: &[u32], dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::new(ids, dev)?.unsqueeze(0)
}

/// T5's encoder (FLUX's `text_encoder_2`).
pub struct T5 {
    model: t5::T5EncoderModel,
    tok: tokenizers::Tokenizer,
    pad: u32,
}

impl T5 {
    /// Loads `dir` (`config.json` and the weights) and `tokenizer`.
    pub fn load(
        dir: &Path,
        tokenizer_json: &Path,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self, String> {
        let (v, p) = config_json(dir)?;
        let cfg: t5::Config =
            serde_json::from_value(v).map_err(|e| format!("{}: {e}", p.display()))?;
        let model = t5::T5EncoderModel::load(mmap(dir, dtype, dev)?, &cfg)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self {
            model,
            tok: tokenizer(tokenizer_json)?,
            pad: cfg.pad_token_id as u32,
        })
    }

    /// The prompt's sequence (1, [`T5_LEN`], d_model): truncated or padded to the length
    /// FLUX.1-dev was trained with.
    pub fn encode(&mut self, prompt: &str) -> Result<Tensor, String> {
        let enc = self.tok.encode(prompt, true).map_err(|e| e.to_string())?;
        let mut tokens: Vec<u32> = enc.get_ids().to_vec();
        tokens.resize(T5_LEN, self.pad);
        let x = ids(&tokens, self.model.device());
        x.and_then(|x| self.model.forward(&x))
            .map_err(|e| e.to_string())
    }
}

/// CLIP-L's text transformer (FLUX's `text_encoder`).
pub struct Clip {
    model: ClipTextTransformer,
    tok: tokenizers::Tokenizer,
    dev: Device,
}

impl Clip {
    /// Loads `dir` (`config.json` of a `CLIPTextModel` and its weights) and `tokenizer`.
    pub fn load(
        dir: &Path,
        tokenizer_json: &Path,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self, String> {
        let (v, p) = config_json(dir)?;
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| format!("{}: `{k}` is missing", p.display()))
        };
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str())
            && act != "quick_gelu"
        {
            return Err(format!(
                "{}: hidden_act {act:?}; FLUX's CLIP-L uses quick_gelu",
                p.display()
            ));
        }
        let cfg = ClipTextConfig {
            vocab_size: num("vocab_size")?,
            embed_dim: num("hidden_size")?,
            activation: Activation::QuickGelu,
            intermediate_size: num("intermediate_size")?,
            max_position_embeddings: num("max_position_embeddings")?,
            pad_with: None,
            num_hidden_layers: num("num_hidden_layers")?,
            num_attention_heads: num("num_attention_heads")?,
            projection_dim: num("projection_dim").unwrap_or(0),
        };
        let model = ClipTextTransformer::new(mmap(dir, dtype, dev)?.pp("text_model"), &cfg)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut tok = tokenizer(tokenizer_json)?;
        tok.with_truncation(Some(tokenizers::TruncationParams {
            max_length: cfg.max_position_embeddings.min(CLIP_LEN),
            ..Default::default()
        }))
        .map_err(|e| e.to_string())?;
        Ok(Self {
            model,
            tok,
            dev: dev.clone(),
        })
    }

    /// Pooled vectors (N, width), one per text: the final hidden state at the end-of-text
    /// token, the last of each unpadded sequence.
    pub fn pooled(&self, texts: &[&str]) -> Result<Tensor, String> {
        let mut rows = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self.tok.encode(*t, true).map_err(|e| e.to_string())?;
            let row = ids(enc.get_ids(), &self.dev)
                .and_then(|x| self.model.forward_with_mask(&x, usize::MAX))
                .and_then(|h| {
                    let l = h.dim(1)?;
                    h.narrow(1, l - 1, 1)?.squeeze(1)
                })
                .map_err(|e| e.to_string())?;
            rows.push(row);
        }
        Tensor::cat(&rows, 0).map_err(|e| e.to_string())
    }
}

/// The FLUX autoencoder (BFL key names, as `ae.safetensors`).
pub struct FluxVae {
    encoder: autoencoder::Encoder,
    decoder: autoencoder::Decoder,
    /// Its shapes, read off the file.
    pub config: autoencoder::Config,
}

impl FluxVae {
    /// The shapes of an autoencoder checkpoint, from its header (FLUX.1's are
    /// `autoencoder::Config::dev()`); the latent normalisation is FLUX's.
    pub fn config_of(h: &HashMap<String, Entry>) -> Result<autoencoder::Config, String> {
        let shape = |k: &str| {
            h.get(k)
                .map(|e| e.shape.clone())
                .ok_or_else(|| format!("not a FLUX VAE: no `{k}`"))
        };
        let conv_in = shape("encoder.conv_in.weight")?;
        let ch = conv_in[0];
        let count = |prefix: &str| {
            (0..)
                .take_while(|i| h.keys().any(|k| k.starts_with(&format!("{prefix}{i}."))))
                .count()
        };
        let levels = count("encoder.down.");
        let ch_mult = (0..levels)
            .map(|i| Ok(shape(&format!("encoder.down.{i}.block.0.conv1.weight"))?[0] / ch))
            .collect::<Result<Vec<usize>, String>>()?;
        Ok(autoencoder::Config {
            resolution: 256,
            in_channels: conv_in[1],
            ch,
            out_ch: shape("decoder.conv_out.weight")?[0],
            ch_mult,
            num_res_blocks: count("encoder.down.0.block."),
            z_channels: shape("decoder.conv_in.weight")?[1],
            scale_factor: FLUX_VAE_SCALE,
            shift_factor: FLUX_VAE_SHIFT,
        })
    }

    /// Loads `ae.safetensors`.
    pub fn load(path: &Path, dtype: DType, dev: &Device) -> Result<Self, String> {
        let config =
            Self::config_of(&header(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
        let vb = mmap(path, dtype, dev)?;
        let err = |e: candle_core::Error| format!("{}: {e}", path.display());
        Ok(Self {
            encoder: autoencoder::Encoder::new(&config, vb.pp("encoder")).map_err(err)?,
            decoder: autoencoder::Decoder::new(&config, vb.pp("decoder")).map_err(err)?,
            config,
        })
    }

    /// Pixels per latent cell (8 for FLUX.1).
    pub fn factor(&self) -> usize {
        1 << (self.config.ch_mult.len() - 1)
    }

    /// Normalised latents (B, z, H/f, W/f) of images (B, 3, H, W) in [−1, 1], from the
    /// posterior's mean, so the same image always gives the same latent.
    pub fn encode(&self, img: &Tensor) -> candle_core::Result<Tensor> {
        let moments = self.encoder.forward(img)?;
        let mean = moments.chunk(2, 1)?.swap_remove(0);
        (mean - self.config.shift_factor)? * self.config.scale_factor
    }

    /// Images (B, 3, H, W) in [−1, 1] from normalised latents.
    pub fn decode(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let z = ((z / self.config.scale_factor)? + self.config.shift_factor)?;
        self.decoder.forward(&z)?.clamp(-1f32, 1f32)
    }
}

/// Packs latents (B, C, H, W) into FLUX's image tokens (B, H/2·W/2, C·4), 2×2 patches in
/// (c, ph, pw) order.
pub fn pack(z: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    z.reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, h / 2 * (w / 2), c * 4))
}

/// The inverse of [`pack`] for a latent of `h × w` cells.
pub fn unpack(x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (b, _, c4) = x.dims3()?;
    x.reshape((b, h / 2, w / 2, c4 / 4, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, c4 / 4, h, w))
}
