//! What draws a scene: a trained layout branch (any variant) or LaRender on the base model,
//! chosen by name, shared by `generate` and `eval-layout`.

use crate::Failure;
use crate::model::ModelDir;
use candle_core::{Device, Tensor};
use std::path::Path;
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::bundle::{Source, load_layout};
use zlayer_model::larender::{Copies, OPACITY};
use zlayer_model::layout_model::{InstanceMaps, LayoutModel, SceneLayout};

/// A scene sampler.
pub enum SceneSampler {
    /// A trained branch on the base.
    Branch(LayoutModel),
    /// LaRender, training-free, on the base.
    LaRender(BaseModel),
}

impl SceneSampler {
    /// The variant `name` of the model folder `model` on `base`: `larender`, or a trained
    /// branch found by [`variant_weights`].
    pub fn by_name(
        model: &ModelDir,
        name: &str,
        base: BaseModel,
        dev: &Device,
    ) -> Result<Self, Failure> {
        if name == "larender" {
            return Ok(Self::LaRender(base));
        }
        let Some(src) = model.layout(name) else {
            let place = model
                .layout_path(name)
                .map_or("the bundled model".into(), |p| p.display().to_string());
            return Err(Failure::User(format!(
                "{place}: no trained `{name}` branch; train one with `zlayer train layout --model {} --variant {name} --out DIR` and copy DIR/layout.* there (larender needs no training)",
                model.name()
            )));
        };
        Self::from_source(&src, base, dev)
    }

    /// A trained branch from its file.
    pub fn from_file(weights: &Path, base: BaseModel, dev: &Device) -> Result<Self, Failure> {
        Self::from_source(&Source::File(weights.to_path_buf()), base, dev)
    }

    fn from_source(src: &Source, base: BaseModel, dev: &Device) -> Result<Self, Failure> {
        Ok(Self::Branch(
            load_layout(src, base, dev).map_err(Failure::User)?,
        ))
    }

    /// Its name in tables and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Branch(m) => m.variant.name(),
            Self::LaRender(_) => "larender",
        }
    }

    /// Whether it has instance layers to show (a branch that composes them).
    pub fn has_maps(&self) -> bool {
        matches!(self, Self::Branch(m) if !m.variant.regional())
    }

    /// The base model underneath.
    pub fn base(&self) -> &BaseModel {
        match self {
            Self::Branch(m) => &m.base,
            Self::LaRender(b) => b,
        }
    }

    /// The grounding ratio it samples with: `requested`, else the model file's; LaRender
    /// acts on every step (none).
    pub fn ratio(&self, requested: Option<f64>) -> Option<f64> {
        match self {
            Self::Branch(m) => Some(requested.unwrap_or(m.grounding_ratio)),
            Self::LaRender(_) => None,
        }
    }

    /// Latent tokens for scenes `layouts` with global prompt ids, and the instances' maps
    /// where the method has them.
    pub fn sample(
        &self,
        ids: &Tensor,
        prompts: &[&str],
        layouts: &[SceneLayout],
        (grid, channels): ((usize, usize), usize),
        opts: &SampleOptions,
        requested_ratio: Option<f64>,
    ) -> candle_core::Result<(Tensor, Option<InstanceMaps>)> {
        let dev = ids.device();
        match self {
            Self::Branch(m) => {
                let p = m.prepare(layouts, grid, dev)?;
                let ratio = requested_ratio.unwrap_or(m.grounding_ratio);
                m.sample_maps(ids, &p, channels, opts, ratio)
            }
            Self::LaRender(b) => {
                let copies = Copies::new(b, prompts, layouts, grid.0 * grid.1, dev)?;
                let tokens = b.sample_larender(ids, &copies, grid, channels, opts, OPACITY)?;
                Ok((tokens, None))
            }
        }
    }
}
