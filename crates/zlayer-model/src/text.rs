//! The tiny model's text encoder: a word-level tokenizer over a closed vocabulary, learned
//! embeddings and a small pre-norm transformer. It returns the token sequence (the DiT's
//! `txt`) and a pooled vector (its `y`), and trains jointly with the DiT.
//!
//! The vocabulary is data stored with the weights (not compiled in), so a checkpoint knows
//! its own words. Open vocabulary needs the Flux-scale model (T5 + CLIP).

use crate::layers::{attend, gelu, layer_norm, linear};
use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use std::collections::HashMap;

/// Token id of padding.
pub const PAD: u32 = 0;

/// A closed word-level vocabulary; id 0 is padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenizer {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

/// A word outside the vocabulary.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown word {word:?} in {text:?}; the tiny model knows: {known}. Open vocabulary needs the Flux-scale model (--model flux-dev)"
)]
pub struct UnknownWord {
    /// The word.
    pub word: String,
    /// The text it came from.
    pub text: String,
    /// The known words, comma-separated.
    pub known: String,
}

impl Tokenizer {
    /// A tokenizer over these words (duplicates are dropped, order kept).
    pub fn new<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Self {
        let mut list = vec!["<pad>".to_string()];
        let mut ids = HashMap::new();
        for w in words {
            let w = w.as_ref().to_lowercase();
            if !ids.contains_key(&w) {
                ids.insert(w.clone(), list.len() as u32);
                list.push(w);
            }
        }
        Self { words: list, ids }
    }

    /// Vocabulary size, padding included.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether only padding is known.
    pub fn is_empty(&self) -> bool {
        self.words.len() == 1
    }

    /// The words, padding first.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Splits on whitespace, with commas as words of their own, lower-cased.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, UnknownWord> {
        text.replace(',', " , ")
            .split_whitespace()
            .map(|w| {
                let w = w.to_lowercase();
                self.ids.get(&w).copied().ok_or_else(|| UnknownWord {
                    word: w,
                    text: text.to_string(),
                    known: self.words[1..].join(", "),
                })
            })
            .collect()
    }

    /// Encodes a batch, padded to the longest (or `max_len`, truncating): ids (B, L) u32.
    pub fn batch(
        &self,
        texts: &[&str],
        max_len: usize,
        dev: &Device,
    ) -> std::result::Result<Tensor, UnknownWord> {
        let enc: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<std::result::Result<_, _>>()?;
        let l = enc
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .clamp(1, max_len);
        let flat: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.iter().copied().chain(std::iter::repeat(PAD)).take(l))
            .collect();
        Ok(Tensor::from_vec(flat, (texts.len(), l), dev).expect("shape matches"))
    }
}

/// Text encoder shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextConfig {
    /// Vocabulary size (padding included).
    pub vocab: usize,
    /// Longest sequence.
    pub max_len: usize,
    /// Width.
    pub width: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of the pooled output.
    pub pooled: usize,
}

impl TextConfig {
    /// The bundled tiny model's encoder (2 layers of width 128, 64 tokens) for `vocab` words.
    pub fn tiny(vocab: usize) -> Self {
        Self {
            vocab,
            max_len: 64,
            width: 128,
            layers: 2,
            heads: 4,
            pooled: 128,
        }
    }
}

/// One pre-norm transformer layer (`attn.qkv`, `attn.proj`, `mlp.0`, `mlp.2`).
#[derive(Debug, Clone)]
struct Layer {
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Layer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.width;
        Ok(Self {
            qkv: candle_nn::linear(w, 3 * w, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear(w, w, vb.pp("attn.proj"))?,
            fc1: candle_nn::linear(w, 4 * w, vb.pp("mlp.0"))?,
            fc2: candle_nn::linear(4 * w, w, vb.pp("mlp.2"))?,
            heads: cfg.heads,
        })
    }

    /// `mask_bias` (B, 1, 1, L): 0 for tokens, −1e9 for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let w = x.dim(2)?;
        let (q, k, v) = crate::layers::split_qkv(&linear(&self.qkv, &layer_norm(x)?)?, self.heads)?;
        let d = w / self.heads;
        let a = attend(&q, &k, &v, 1.0 / (d as f64).sqrt(), Some(mask_bias))?; // (B, L, w)
        let x = (x + linear(&self.proj, &a)?)?;
        &x + linear(&self.fc2, &gelu(&linear(&self.fc1, &layer_norm(&x)?)?)?)?
    }
}

/// Embeddings, transformer, and a pooled projection.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tok: Embedding,
    pos: Tensor,
    layers: Vec<Layer>,
    pool: Linear,
}

impl TextEncoder {
    /// Loads `tok`, `pos`, `layers.N.*`, `pool`.
    pub fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            tok: candle_nn::embedding(cfg.vocab, cfg.width, vb.pp("tok"))?,
            pos: vb.get_with_hints(
                (cfg.max_len, cfg.width),
                "pos",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            layers: (0..cfg.layers)
                .map(|i| Layer::new(cfg, vb.pp("layers").pp(i)))
                .collect::<Result<_>>()?,
            pool: candle_nn::linear(cfg.width, cfg.pooled, vb.pp("pool"))?,
        })
    }

    /// Token ids (B, L) → (sequence (B, L, width), pooled (B, pooled)); padding is masked
    /// in attention and left out of the mean that feeds the pooled vector.
    pub fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, l) = ids.dims2()?;
        let keep = ids.ne(PAD)?.to_dtype(DType::F32)?; // (B, L)
        let mask_bias = ((&keep - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)?; // (B, 1, 1, L)
        let mut x = self
            .tok
            .forward(ids)?
            .broadcast_add(&self.pos.narrow(0, 0, l)?.unsqueeze(0)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask_bias)?;
        }
        let x = layer_norm(&x)?;
        let k = keep.unsqueeze(D::Minus1)?; // (B, L, 1)
        let mean = x
            .broadcast_mul(&k)?
            .sum(1)?
            .broadcast_div(&k.sum(1)?.clamp(1.0, f64::MAX)?)?;
        Ok((x, self.pool.forward(&mean)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tok() -> Tokenizer {
        Tokenizer::new([
            "a",
            "red",
            "blue",
            "sphere",
            "cube",
            "in",
            "front",
            "of",
            "on",
            "sky",
            "background",
            ",",
        ])
    }

    #[test]
    fn unknown_words_list_the_vocabulary() {
        assert_eq!(
            tok().encode("A red sphere, a blue cube").unwrap(),
            vec![1, 2, 4, 12, 1, 3, 5]
        );
        let e = tok().encode("a teal sphere").unwrap_err().to_string();
        assert!(
            e.contains("unknown word \"teal\"")
                && e.contains("red, blue, sphere")
                && e.contains("flux-dev"),
            "{e}"
        );
    }

    #[test]
    fn padding_does_not_change_the_output() -> Result<()> {
        let dev = Device::Cpu;
        let t = tok();
        let cfg = TextConfig {
            vocab: t.len(),
            max_len: 16,
            width: 32,
            layers: 2,
            heads: 2,
            pooled: 24,
        };
        let vm = VarMap::new();
        let enc = TextEncoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let short = t.batch(&["a red sphere"], 16, &dev).unwrap();
        let padded = t
            .batch(
                &["a red sphere", "a blue cube in front of a red sphere"],
                16,
                &dev,
            )
            .unwrap();
        let (s1, p1) = enc.forward(&short)?;
        let (s2, p2) = enc.forward(&padded)?;
        assert_eq!(s1.dims(), &[1, 3, 32]);
        assert_eq!(p2.dims(), &[2, 24]);
        let d = (p1.get(0)? - p2.get(0)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "pooled differs by {d}");
        let d = (s1.get(0)? - s2.get(0)?.narrow(0, 0, 3)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "sequence differs by {d}");
        // Every parameter tensor receives a gradient.
        let grads = (s2.sqr()?.sum_all()? + p2.sqr()?.sum_all()?)?.backward()?;
        let missing = crate::optim::params_without_gradient(&vm, &grads);
        assert!(missing.is_empty(), "no gradient reaches {missing:?}");
        Ok(())
    }
}
