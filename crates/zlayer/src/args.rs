//! Flag types and value parsers that several commands share. A command imports these and the
//! application crate, never another command.

use clap::{Args, ValueEnum};
use zlayer_model::base::SampleOptions;
use zlayer_model::layout_model::Variant;

/// The synthetic world's difficulty splits.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SplitArg {
    /// 1–3 instances, little overlap.
    Simple,
    /// 3–5 instances, moderate overlap.
    Regular,
    /// 5–8 instances, heavy overlap.
    Complex,
}

impl From<SplitArg> for zlayer_synth::Split {
    fn from(a: SplitArg) -> Self {
        match a {
            SplitArg::Simple => Self::Simple,
            SplitArg::Regular => Self::Regular,
            SplitArg::Complex => Self::Complex,
        }
    }
}

/// A grounding ratio: a number in [0, 1].
pub fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?}: a fraction of the steps, from 0 (base model only) to 1 (every step)"
        )),
    }
}

/// A guidance weight: a finite number ≥ 0.
pub fn weight(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(w) if w.is_finite() && w >= 0.0 => Ok(w),
        _ => Err(format!("{s:?}: a number ≥ 0")),
    }
}

/// A share of the steps in (0, 1].
pub fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(format!(
            "{s:?}: a share of the steps, more than 0 and at most 1"
        )),
    }
}

/// A flow time where a refinement starts: a number in (0, 1].
pub fn flow_time(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!(
            "{s:?}: a flow time in (0, 1], e.g. 0.3 (1 redraws from pure noise)"
        )),
    }
}

/// Steps, seed and guidance of a denoise that redraws part of an image.
#[derive(Debug, Args)]
pub struct Denoise {
    /// Euler steps of the whole schedule (a refinement runs the part below its start).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifier-free guidance [default: the model's tuned value, else 1 (off)].
    #[arg(long)]
    pub guidance: Option<f64>,
}

impl Denoise {
    /// The sampling options, with the model's tuned guidance where none was given.
    pub fn options(&self, model: &zlayer_app::model::Model) -> SampleOptions {
        SampleOptions {
            steps: self.steps,
            guidance: self.guidance.unwrap_or_else(|| model.guidance()),
            seed: self.seed,
        }
    }
}

/// A trainable variant by name.
pub fn parse_variant(s: &str) -> Result<Variant, String> {
    if let Some(v) = Variant::ALL.into_iter().find(|v| v.name() == s) {
        return Ok(v);
    }
    let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
    if s == "larender" {
        return Err(format!(
            "larender is training-free: use it with `zlayer generate --variant larender` or `zlayer eval-layout --larender`; trainable: {}",
            names.join(", ")
        ));
    }
    Err(format!(
        "unknown variant {s:?}; use one of {}",
        names.join(", ")
    ))
}

/// Formats `convert` can write.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Target {
    /// zlayer's native JSON.
    Native,
    /// The official OcclusionFormer layout JSON.
    Occlusionformer,
}

/// Writes to stdout; a closed pipe (`zlayer ... | head`) ends the output quietly.
pub fn print_stdout(text: &str) -> Result<(), zlayer_app::Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(zlayer_app::Failure::Internal(
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

/// The candidates and validation scenes that choose a branch's grounding ratio, layout and
/// order guidance and guidance interval (`train layout`, `tune`).
#[derive(Debug, Args)]
pub struct TuneFlags {
    /// Candidate grounding ratios (the share of Euler steps the branch runs on). Validation
    /// scenes are drawn at each and the best Occ. F1 is recorded in layout.json, so the
    /// branch samples with it.
    #[arg(
        id = "tune_ratios",
        long = "tune-ratios",
        value_name = "RATIOS",
        value_delimiter = ',',
        default_value = "0.3,0.6,1.0"
    )]
    pub ratios: Vec<f64>,
    /// Candidate layout guidances (each ≥ 1; 1 is none), tried at the best ratio: λ > 1
    /// pushes each grounded step's velocity from the base's further through the branch's, for
    /// one more base pass per step (docs/layout.md). The best is recorded beside the ratio.
    #[arg(
        id = "tune_guidance",
        long = "tune-guidance",
        value_name = "GUIDANCES",
        value_delimiter = ',',
        default_value = "1,2,3"
    )]
    pub guidance: Vec<f64>,
    /// Candidate order guidances (each ≥ 0; 0 is none), tried at the best ratio and layout
    /// guidance: μ > 0 adds μ times the difference between the branch with the declared
    /// order and with every occlusion reversed, for one more branch pass per step
    /// (docs/layout.md). The best is recorded beside the others.
    #[arg(
        id = "tune_order",
        long = "tune-order",
        value_name = "ORDERS",
        value_delimiter = ',',
        default_value = "0,1,2"
    )]
    pub order: Vec<f64>,
    /// Candidate shares of the steps, the first ones, that get the chosen layout and order
    /// guidance (each in (0, 1]; 1 is every grounded step), tried when a guidance was
    /// chosen: a shorter interval saves the guidance's passes on the later steps, and where
    /// it scores as well it is kept (docs/layout.md). The best is recorded beside the others.
    #[arg(
        id = "tune_guided",
        long = "tune-guided",
        value_name = "SHARES",
        value_delimiter = ',',
        default_value = "1"
    )]
    pub guided: Vec<f64>,
    /// Validation scenes per split for that choice (data seed + 2,000,000, not the
    /// evaluation's); 0 keeps the official 0.3 untested.
    #[arg(
        id = "tune_scenes",
        long = "tune-scenes",
        value_name = "N",
        default_value_t = 48
    )]
    pub scenes: usize,
    /// Euler steps per validation image.
    #[arg(
        id = "tune_steps",
        long = "tune-steps",
        value_name = "N",
        default_value_t = 20
    )]
    pub steps: usize,
}

impl TuneFlags {
    /// The tuning over `splits`, for a branch trained with data seed `seed`.
    pub fn tuning<'a>(
        &'a self,
        splits: &'a [zlayer_synth::Split],
        seed: u64,
    ) -> zlayer_app::tune::Tuning<'a> {
        zlayer_app::tune::Tuning {
            ratios: &self.ratios,
            guidances: &self.guidance,
            orders: &self.order,
            guided: &self.guided,
            scenes: self.scenes,
            splits,
            steps: self.steps,
            seed,
        }
    }
}
