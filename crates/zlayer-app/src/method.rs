//! What draws a scene: the [`Method`] names it (the base alone, training-free LaRender, or a
//! trained layout branch of any variant), and a [`SceneSampler`] runs it. Shared by
//! `generate`, `eval-layout`, the paper suite and the server.

use crate::Failure;
use crate::model::ModelDir;
use candle_core::{Device, Tensor};
use std::path::Path;
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::bundle::{Source, load_layout};
use zlayer_model::inpaint::Known;
use zlayer_model::larender::{Copies, OPACITY};
use zlayer_model::layout_model::{Grounding, InstanceMaps, LayoutModel, SceneLayout, Variant};

/// A method that draws a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The base model alone, prompted with the scene's prompt: no boxes, no order.
    Base,
    /// LaRender, training-free, on the base (DESIGN.md §4.2).
    LaRender,
    /// A trained layout branch: OcclusionFormer, a baseline or an ablation.
    Branch(Variant),
    /// The OcclusionFormer branch after reinforcement learning (`zlayer train grpo`), kept
    /// in a model folder as `variants/grpo/layout.safetensors`.
    Grpo,
}

impl Method {
    /// The paper's main table, weakest first.
    pub const MAIN: [Method; 6] = [
        Method::Base,
        Method::LaRender,
        Method::Branch(Variant::Global),
        Method::Branch(Variant::GlobalRank),
        Method::Branch(Variant::Occlusionformer),
        Method::Grpo,
    ];

    /// The ablations, each with what it changes.
    pub const ABLATIONS: [(Method, &'static str); 4] = [
        (
            Method::Branch(Variant::StaticSigma),
            "one learned density vector for every instance and time",
        ),
        (Method::Branch(Variant::NoAlign), "no alignment loss"),
        (
            Method::Branch(Variant::VisibleMasks),
            "alignment on visible masks, not amodal",
        ),
        (
            Method::Branch(Variant::AttnMapLoss),
            "attention-map loss instead of the queried alignment",
        ),
    ];

    /// Its name on the command line, in folders and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Method::Base => "base",
            Method::LaRender => "larender",
            Method::Branch(v) => v.name(),
            Method::Grpo => "grpo",
        }
    }

    /// Whether it draws instance layers (a branch that composes them; the `global` baselines
    /// attend regionally and have none).
    pub fn has_layers(self) -> bool {
        matches!(self, Method::Branch(v) if !v.regional()) || self == Method::Grpo
    }

    /// Whether it is one of the ablations (not in the main table).
    pub fn is_ablation(self) -> bool {
        !Self::MAIN.contains(&self)
    }

    /// Every method, main table first.
    pub fn all() -> impl Iterator<Item = Method> {
        Self::MAIN
            .into_iter()
            .chain(Self::ABLATIONS.into_iter().map(|a| a.0))
    }

    /// Parses a name; the error lists every method.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::all().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::all().map(Method::name).collect();
            format!("unknown method {s:?}: use {}", names.join(", "))
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Layout and order guidance a request asks for in place of the branch file's
/// (docs/layout.md); `None` keeps the file's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BranchGuidance {
    /// Layout guidance λ (1: none).
    pub layout: Option<f64>,
    /// Order guidance μ (0: none).
    pub order: Option<f64>,
    /// The share of the steps, the first ones, that get them (1: every grounded step).
    pub guided: Option<f64>,
}

impl BranchGuidance {
    /// Whether it changes nothing.
    pub fn is_none(&self) -> bool {
        self.layout.is_none() && self.order.is_none() && self.guided.is_none()
    }

    /// Checks its values, and that `method` has a trained branch for them to steer.
    pub fn check(&self, method: Method) -> Result<(), String> {
        for (name, v) in [
            ("layout_guidance", self.layout),
            ("order_guidance", self.order),
        ] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(format!(
                    "{name} {v}: a number ≥ 0 (layout guidance 1 and order guidance 0 are none)"
                ));
            }
        }
        if let Some(v) = self.guided.filter(|v| !(*v > 0.0 && *v <= 1.0)) {
            return Err(format!(
                "guided_ratio {v}: a share of the steps, more than 0 and at most 1"
            ));
        }
        if !self.is_none() && matches!(method, Method::Base | Method::LaRender) {
            return Err(format!(
                "layout_guidance, order_guidance and guided_ratio steer a trained branch; method {method} has none"
            ));
        }
        Ok(())
    }
}

/// A scene sampler.
pub enum SceneSampler {
    /// A trained branch on the base.
    Branch(LayoutModel),
    /// LaRender, training-free, on the base.
    LaRender(BaseModel),
}

impl SceneSampler {
    /// What draws `method` with the model `model` on `base`: `None` for the base alone,
    /// LaRender, or the trained branch that [`ModelDir::layout`] finds.
    pub fn for_method(
        model: &ModelDir,
        method: Method,
        base: BaseModel,
        dev: &Device,
    ) -> Result<Option<Self>, Failure> {
        let name = match method {
            Method::Base => return Ok(None),
            Method::LaRender => return Ok(Some(Self::LaRender(base))),
            Method::Branch(_) | Method::Grpo => method.name(),
        };
        let Some(src) = model.layout(name) else {
            let place = model
                .layout_path(name)
                .map_or("the bundled model".into(), |p| p.display().to_string());
            let older = if *model == ModelDir::Bundled {
                "; the repository's models/tiny, the older 8-channel model, has every baseline and ablation (--model models/tiny)"
            } else {
                ""
            };
            return Err(Failure::User(format!(
                "{place}: no trained `{name}` branch; {} and copy DIR/layout.* there (larender needs no training){older}",
                match method {
                    Method::Grpo => format!(
                        "fine-tune the occlusionformer branch with `zlayer train grpo --model {} --out DIR`",
                        model.name()
                    ),
                    _ => format!(
                        "train one with `zlayer train layout --model {} --variant {name} --out DIR`",
                        model.name()
                    ),
                }
            )));
        };
        Self::from_source(&src, base, dev).map(Some)
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
        matches!(self, Self::Branch(m) if Method::Branch(m.variant).has_layers())
    }

    /// The base model underneath.
    pub fn base(&self) -> &BaseModel {
        match self {
            Self::Branch(m) => &m.base,
            Self::LaRender(b) => b,
        }
    }

    /// Samples with `g`'s layout and order guidance where it sets them (a branch's; checked
    /// by [`BranchGuidance::check`]).
    pub fn steer(&mut self, g: BranchGuidance) {
        if let Self::Branch(m) = self {
            m.layout_guidance = g.layout.unwrap_or(m.layout_guidance);
            m.order_guidance = g.order.unwrap_or(m.order_guidance);
            m.guided_ratio = g.guided.unwrap_or(m.guided_ratio);
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
    /// where the method has them; keeps a known latent where asked ([`Known`]), which
    /// LaRender cannot.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        ids: &Tensor,
        prompts: &[&str],
        layouts: &[SceneLayout],
        (grid, channels): ((usize, usize), usize),
        opts: &SampleOptions,
        requested_ratio: Option<f64>,
        known: Option<&Known>,
    ) -> candle_core::Result<(Tensor, Option<InstanceMaps>)> {
        let dev = ids.device();
        match self {
            Self::Branch(m) => {
                let p = m.prepare(layouts, grid, dev)?;
                let g = Grounding {
                    ratio: requested_ratio.unwrap_or(m.grounding_ratio),
                    ..m.grounding()
                };
                m.sample_maps(ids, &p, channels, opts, g, known)
            }
            Self::LaRender(_) if known.is_some() => {
                candle_core::bail!("larender cannot keep a known latent; use a trained branch")
            }
            Self::LaRender(b) => {
                let copies = Copies::new(b, prompts, layouts, grid.0 * grid.1, dev)?;
                let tokens = b.sample_larender(ids, &copies, grid, channels, opts, OPACITY)?;
                Ok((tokens, None))
            }
        }
    }
}
