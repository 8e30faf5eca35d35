//! Model files on disk: f16 safetensors with a JSON description beside each
//! (`vae.safetensors` + `vae.json`, `base.safetensors` + `base.json`).

use crate::base::BaseModel;
use crate::config::Config;
use crate::text::{TextConfig, Tokenizer};
use crate::train::load_weights;
use crate::vae::{Vae, VaeConfig};
use candle_core::{Device, Tensor};
use std::path::Path;

/// A trained VAE with its latent normalisation.
pub struct VaeBundle {
    /// The autoencoder.
    pub vae: Vae,
    /// Its shape.
    pub cfg: VaeConfig,
    /// Latent mean, subtracted before scaling.
    pub shift: f64,
    /// 1 / latent std.
    pub scale: f64,
}

impl VaeBundle {
    /// Images (B, 3, H, W) in [−1, 1] → normalised latent tokens (B, h·w, C), detached.
    pub fn encode_tokens(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = self
            .vae
            .encode(x)?
            .detach()
            .affine(self.scale, -self.shift * self.scale)?; // (B, C, h, w)
        let (b, c, h, w) = z.dims4()?;
        z.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
    }

    /// Normalised latent tokens (B, h·w, C) on an h×w grid → images (B, 3, H, W) in [−1, 1].
    pub fn decode_tokens(
        &self,
        tokens: &Tensor,
        h: usize,
        w: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, _, c) = tokens.dims3()?;
        let z = tokens
            .transpose(1, 2)?
            .reshape((b, c, h, w))?
            .affine(1.0 / self.scale, self.shift)?;
        self.vae.decode(&z)?.clamp(-1.0, 1.0)
    }
}

/// A JSON file; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn field<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    key: &str,
    path: &Path,
) -> Result<T, String> {
    serde_json::from_value(
        v.get(key)
            .cloned()
            .ok_or_else(|| format!("{}: missing {key:?}", path.display()))?,
    )
    .map_err(|e| format!("{}: {key}: {e}", path.display()))
}

/// Loads `<stem>.safetensors` and `<stem>.json` of a VAE.
pub fn load_vae(weights: &Path, dev: &Device) -> Result<VaeBundle, String> {
    let json = weights.with_extension("json");
    let meta = read_json(&json)?;
    let cfg: VaeConfig = field(&meta, "config", &json)?;
    let vae = Vae::new(&cfg, load_weights(weights, dev)?)
        .map_err(|e| format!("{}: {e}", weights.display()))?;
    Ok(VaeBundle {
        vae,
        shift: field(&meta, "latent_shift", &json)?,
        scale: field(&meta, "latent_scale", &json)?,
        cfg,
    })
}

/// Loads `<stem>.safetensors` and `<stem>.json` of a base model (configs and vocabulary).
pub fn load_base(weights: &Path, dev: &Device) -> Result<BaseModel, String> {
    let json = weights.with_extension("json");
    let meta = read_json(&json)?;
    let dit: Config = field(&meta, "dit", &json)?;
    let text: TextConfig = field(&meta, "text", &json)?;
    let words: Vec<String> = field(&meta, "vocabulary", &json)?;
    BaseModel::new(
        &dit,
        &text,
        Tokenizer::new(words.iter().skip(1)),
        load_weights(weights, dev)?,
    )
    .map_err(|e| format!("{}: {e}", weights.display()))
}

/// The layout branch of `weights` (`layout.safetensors` + `layout.json`, from
/// `zlayer train layout`) on `base`.
pub fn load_layout(
    weights: &Path,
    base: BaseModel,
    dev: &Device,
) -> Result<crate::layout_model::LayoutModel, String> {
    let json = weights.with_extension("json");
    let meta = read_json(&json)?;
    let double: Vec<usize> = field(&meta, "double", &json)?;
    let single: Vec<usize> = field(&meta, "single", &json)?;
    let rank: usize = field(&meta, "rank", &json)?;
    let variant = match meta.get("variant") {
        Some(_) => field(&meta, "variant", &json)?,
        None => crate::layout_model::Variant::Occlusionformer,
    };
    let mut model = crate::layout_model::LayoutModel::new(
        base,
        &double,
        &single,
        rank,
        variant,
        load_weights(weights, dev)?,
    )
    .map_err(|e| format!("{}: {e}", weights.display()))?;
    if meta.get("grounding_ratio").is_some() {
        model.grounding_ratio = field(&meta, "grounding_ratio", &json)?;
    }
    Ok(model)
}
