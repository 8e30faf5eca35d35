//! The grounding ratio a trained branch samples with, chosen on validation scenes.
//!
//! The branch runs for the first `grounding_ratio` of the Euler steps (DESIGN.md §4.3). The
//! official 0.3 suits FLUX.1-dev; a small model may need its branch on more steps. `zlayer
//! train layout` ends by drawing held-out validation scenes at each candidate ratio and
//! records the one with the best Occ. F1 in the branch's `layout.json`, so a fresh branch
//! samples at its own best value. The validation scenes (data seed + 2,000,000) are not the
//! evaluation's (seed + 1,000,000).

use crate::Failure;
use crate::data::scenes;
use crate::method::SceneSampler;
use crate::model::Model;
use crate::protocol::{Protocol, score, write_truth};
use candle_core::Device;
use std::path::Path;
use zlayer_model::layout_model::OFFICIAL_GROUNDING_RATIO;
use zlayer_synth::Split;

/// The offset of the validation scenes' data seed.
pub const VALIDATION_SEED: u64 = 2_000_000;

/// One candidate's scores on the validation scenes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RatioScore {
    /// The grounding ratio.
    pub ratio: f64,
    /// Occ. F1 (the choice).
    pub occ_f1: Option<f64>,
    /// Order accuracy.
    pub order_accuracy: Option<f64>,
    /// Mask mIoU.
    pub mask_miou: Option<f64>,
}

/// What to tune on.
pub struct Tuning<'a> {
    /// Candidate ratios, each in (0, 1].
    pub ratios: &'a [f64],
    /// Validation scenes per split.
    pub scenes: usize,
    /// The splits they come from.
    pub splits: &'a [Split],
    /// Euler steps per image.
    pub steps: usize,
    /// The training run's data seed.
    pub seed: u64,
}

/// Draws the validation scenes with the branch in `weights` at every candidate ratio (into
/// `work`, resumable) and returns the best ratio (the smallest among equal scores) and
/// every candidate's scores.
pub fn grounding_ratio(
    m: &Model,
    weights: &Path,
    t: &Tuning,
    work: &Path,
    dev: &Device,
) -> Result<(f64, Vec<RatioScore>), Failure> {
    if let Some(bad) = t.ratios.iter().find(|r| !(**r > 0.0 && **r <= 1.0)) {
        return Err(Failure::User(format!(
            "grounding ratio {bad}: each candidate must be in (0, 1]"
        )));
    }
    let seed = t.seed + VALIDATION_SEED;
    let held = scenes(seed, 0, t.scenes * t.splits.len(), m.size as u32, t.splits);
    let (gt, _) = write_truth(&held, work, m.size)?;
    let sampler = SceneSampler::from_file(weights, m.base.clone(), dev)?;
    let mut rows = Vec::new();
    for &ratio in t.ratios {
        let p = Protocol {
            m,
            dev,
            seed,
            steps: t.steps,
            batch: 8,
            ratio: Some(ratio),
            score_only: false,
        };
        let dir = work.join(format!("ratio-{ratio}"));
        p.generate(Some(&sampler), &held, &dir)?;
        let s = score(
            &work.join("eval"),
            &format!("ratio {ratio}"),
            &dir,
            &gt,
            0.0,
            Some(ratio),
        )?;
        rows.push(RatioScore {
            ratio,
            occ_f1: s.summary.occ_f1,
            order_accuracy: s.summary.order_accuracy,
            mask_miou: s.summary.mask_miou,
        });
    }
    Ok((best(&rows), rows))
}

/// The ratio with the best Occ. F1; the smallest among equals (fewer steps pay the branch),
/// and the official 0.3 when there is none.
pub fn best(rows: &[RatioScore]) -> f64 {
    let key = |r: &RatioScore| r.occ_f1.unwrap_or(f64::NEG_INFINITY);
    rows.iter()
        .reduce(|b, r| {
            if key(r) > key(b) || (key(r) == key(b) && r.ratio < b.ratio) {
                r
            } else {
                b
            }
        })
        .map_or(OFFICIAL_GROUNDING_RATIO, |r| r.ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64, occ_f1: Option<f64>) -> RatioScore {
        RatioScore {
            ratio,
            occ_f1,
            order_accuracy: None,
            mask_miou: None,
        }
    }

    #[test]
    fn the_best_occ_f1_wins_and_ties_go_to_the_smaller_ratio() {
        assert_eq!(best(&[row(0.3, Some(0.5)), row(1.0, Some(0.6))]), 1.0);
        assert_eq!(
            best(&[
                row(1.0, Some(0.6)),
                row(0.6, Some(0.6)),
                row(0.3, Some(0.2))
            ]),
            0.6
        );
        assert_eq!(best(&[row(0.6, None), row(1.0, Some(0.1))]), 1.0);
        assert_eq!(best(&[row(0.6, None)]), 0.6, "a lone candidate stands");
        assert_eq!(best(&[]), OFFICIAL_GROUNDING_RATIO);
    }
}
