//! A tiny model: where it lives (built in, or a folder), the VAE, the base and their typed
//! metadata.

use crate::Failure;
use candle_core::Device;
use std::path::{Path, PathBuf};
use zlayer_model::base::BaseModel;
use zlayer_model::bundle::{Source, VaeBundle, load_base, load_vae};

/// Where a tiny model lives.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelDir {
    /// `models/tiny16`, built into the binary ([`crate::bundled`]).
    Bundled,
    /// A folder with `vae.*` and `base.*`, the branch `layout.*` and `variants/NAME/layout.*`.
    Dir(PathBuf),
}

impl ModelDir {
    /// The `--model` word: `bundled`, or a folder.
    pub const BUNDLED: &'static str = "bundled";

    /// Parses a `--model` value.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(if s == Self::BUNDLED {
            Self::Bundled
        } else {
            Self::Dir(PathBuf::from(s))
        })
    }

    /// Its name in messages and metadata: `bundled`, or the folder.
    pub fn name(&self) -> String {
        match self {
            Self::Bundled => Self::BUNDLED.into(),
            Self::Dir(d) => d.display().to_string(),
        }
    }

    /// Whether it is the folder `name` (e.g. `flux-dev`, which is not a tiny model).
    pub fn is_named(&self, name: &str) -> bool {
        matches!(self, Self::Dir(d) if d.as_os_str() == name)
    }

    fn file(dir: &Path, stem: &str) -> PathBuf {
        dir.join(format!("{stem}.safetensors"))
    }

    /// The VAE file; a folder's must exist.
    pub fn vae(&self) -> Result<Source, Failure> {
        self.required("vae", crate::bundled::VAE)
    }

    /// The base file; a folder's must exist.
    pub fn base(&self) -> Result<Source, Failure> {
        self.required("base", crate::bundled::BASE)
    }

    fn required(&self, stem: &str, bundled: Source) -> Result<Source, Failure> {
        let Self::Dir(dir) = self else {
            return Ok(bundled);
        };
        let path = Self::file(dir, stem);
        if !path.is_file() {
            return Err(Failure::User(format!(
                "{}: no such model file; train one with `zlayer train vae` and `zlayer train base`, or pass --model DIR (or leave --model out for the bundled model)",
                path.display()
            )));
        }
        Ok(Source::File(path))
    }

    /// The DecFormer that blends this model's latents (`pelc.safetensors`), when it has one.
    pub fn pelc(&self) -> Option<Source> {
        match self {
            Self::Bundled => Some(crate::bundled::PELC),
            Self::Dir(dir) => {
                let path = Self::file(dir, "pelc");
                path.is_file().then_some(Source::File(path))
            }
        }
    }

    /// Where a named variant's trained branch is: `occlusionformer` at the top,
    /// baselines and ablations under `variants/NAME/`. `None` when there is none.
    pub fn layout(&self, variant: &str) -> Option<Source> {
        match self.layout_path(variant) {
            None => crate::bundled::layout(variant),
            Some(path) => path.is_file().then_some(Source::File(path)),
        }
    }

    /// The file a variant's branch is read from in a folder (for messages); `None` for the
    /// bundled model.
    pub fn layout_path(&self, variant: &str) -> Option<PathBuf> {
        let Self::Dir(dir) = self else {
            return None;
        };
        Some(if variant == "occlusionformer" {
            Self::file(dir, "layout")
        } else {
            Self::file(&dir.join("variants").join(variant), "layout")
        })
    }
}

impl serde::Serialize for ModelDir {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// What `base.json` says of a base model that zlayer acts on. Every field is required but
/// for the ones a run added later, whose absence has one meaning (said at each).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BaseMeta {
    /// Image side in pixels it was trained at.
    pub image_size: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Scenes per step.
    pub batch: usize,
    /// Data seed.
    pub seed: u64,
    /// Split names it was trained on, e.g. `["simple", "regular"]`.
    pub splits: Vec<String>,
    /// Its scenes' minimum visible pixels per object; files from before the filter
    /// existed trained on every scene (0).
    #[serde(default)]
    pub min_visible: f32,
    /// Tuned classifier-free guidance; a base without one samples unguided (1).
    pub guidance: Option<f64>,
}

/// The tiny model: VAE, base, and the image side they were trained at.
pub struct Model {
    /// The autoencoder.
    pub vae: VaeBundle,
    /// The text-to-image model.
    pub base: BaseModel,
    /// Image side in pixels.
    pub size: usize,
    /// base.json, typed.
    pub meta: BaseMeta,
}

impl Model {
    /// Loads the VAE and the base of `dir`.
    pub fn load(dir: &ModelDir, dev: &Device) -> Result<Self, Failure> {
        let (vae_src, base_src) = (dir.vae()?, dir.base()?);
        let vae = load_vae(&vae_src, dev).map_err(Failure::User)?;
        let base = load_base(&base_src, dev).map_err(Failure::User)?;
        let meta: BaseMeta = serde_json::from_value(base_src.json().map_err(Failure::User)?)
            .map_err(|e| Failure::User(format!("{}: {e}", base_src.json_name())))?;
        Ok(Self {
            vae,
            base,
            size: meta.image_size,
            meta,
        })
    }

    /// Guidance when none is asked for: base.json's tuned `guidance`, else 1 (off).
    pub fn guidance(&self) -> f64 {
        self.meta.guidance.unwrap_or(1.0)
    }
}

/// A trained VAE file (`vae.safetensors` with its `vae.json`) and the image side it was
/// trained at.
pub fn vae_file(path: &Path, dev: &Device) -> Result<(VaeBundle, u32), Failure> {
    if !path.is_file() {
        return Err(Failure::User(format!(
            "{}: no such VAE file; train one with `zlayer train vae --out DIR` and pass DIR/vae.safetensors",
            path.display()
        )));
    }
    vae_of(&Source::File(path.to_path_buf()), dev)
}

/// A VAE and its image side in pixels, from a file or the bundle.
pub fn vae_of(src: &Source, dev: &Device) -> Result<(VaeBundle, u32), Failure> {
    let vae = load_vae(src, dev).map_err(Failure::User)?;
    let size = src
        .json()
        .and_then(|v| {
            serde_json::from_value(v["image_size"].clone())
                .map_err(|e| format!("{}: image_size: {e}", src.json_name()))
        })
        .map_err(Failure::User)?;
    Ok((vae, size))
}
