//! The grounding ratio, layout guidance and order guidance a trained branch samples with,
//! chosen on validation scenes.
//!
//! The branch runs for the first `grounding_ratio` of the Euler steps (DESIGN.md §4.3). The
//! official 0.3 suits FLUX.1-dev; a small model may need its branch on more steps. On those
//! steps layout guidance λ can push the velocity further from the base's, through the
//! branch's, and order guidance μ away from the branch with every occlusion reversed
//! (docs/layout.md). `zlayer train layout` ends by drawing held-out validation scenes
//! at each candidate ratio, then at the best ratio with each candidate λ, then with each μ,
//! then with the guidance on only the first share of the steps (the guidance interval),
//! and records the choice with the best Occ. F1 in the branch's `layout.json`, so a fresh
//! branch samples at its own best values; `zlayer tune` does the same for a branch already
//! trained. The validation scenes (data seed + 2,000,000) are not the evaluation's
//! (seed + 1,000,000).

use crate::Failure;
use crate::data::scenes;
use crate::method::SceneSampler;
use crate::model::Model;
use crate::protocol::{Protocol, score, write_truth};
use candle_core::Device;
use std::path::Path;
use zlayer_model::layout_model::{Grounding, OFFICIAL_GROUNDING_RATIO};
use zlayer_synth::Split;

/// The offset of the validation scenes' data seed.
pub const VALIDATION_SEED: u64 = 2_000_000;

/// One candidate's scores on the validation scenes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RatioScore {
    /// The grounding ratio.
    pub ratio: f64,
    /// The layout guidance.
    pub guidance: f64,
    /// The order guidance.
    pub order: f64,
    /// The share of the steps with layout and order guidance.
    pub guided: f64,
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
    /// Candidate layout guidances, each ≥ 1, tried at the best ratio; 1 (none) is always a
    /// candidate.
    pub guidances: &'a [f64],
    /// Candidate order guidances, each ≥ 0, tried at the best ratio and layout guidance; 0
    /// (none) is always a candidate.
    pub orders: &'a [f64],
    /// Candidate shares of the steps, the first ones, with layout and order guidance, each in
    /// (0, 1], tried with the best guidances when there are any; 1 (every grounded step) is
    /// always a candidate.
    pub guided: &'a [f64],
    /// Validation scenes per split.
    pub scenes: usize,
    /// The splits they come from.
    pub splits: &'a [Split],
    /// Euler steps per image.
    pub steps: usize,
    /// The training run's data seed.
    pub seed: u64,
}

/// Draws the validation scenes with the branch in `weights` at every candidate ratio without
/// guidance, then at the best ratio with every candidate layout guidance, then at the best of
/// those with every candidate order guidance, then with those guidances on every candidate
/// share of the steps (into `work`, resumable), and returns the best (among equal scores the
/// cheaper: the smaller ratio, then the smaller guidances, then the shorter interval) and
/// every candidate's scores.
pub fn grounding(
    m: &Model,
    weights: &Path,
    t: &Tuning,
    work: &Path,
    dev: &Device,
) -> Result<(Grounding, Vec<RatioScore>), Failure> {
    if let Some(bad) = t.ratios.iter().find(|r| !(**r > 0.0 && **r <= 1.0)) {
        return Err(Failure::User(format!(
            "grounding ratio {bad}: each candidate must be in (0, 1]"
        )));
    }
    if let Some(bad) = t.guidances.iter().find(|g| !(**g >= 1.0 && g.is_finite())) {
        return Err(Failure::User(format!(
            "layout guidance {bad}: each candidate must be a number ≥ 1 (1: none)"
        )));
    }
    if let Some(bad) = t.orders.iter().find(|g| !(**g >= 0.0 && g.is_finite())) {
        return Err(Failure::User(format!(
            "order guidance {bad}: each candidate must be a number ≥ 0 (0: none)"
        )));
    }
    if let Some(bad) = t.guided.iter().find(|g| !(**g > 0.0 && **g <= 1.0)) {
        return Err(Failure::User(format!(
            "guided share {bad}: each candidate must be in (0, 1] (1: every grounded step)"
        )));
    }
    let seed = t.seed + VALIDATION_SEED;
    let held = scenes(seed, 0, t.scenes * t.splits.len(), m.size as u32, t.splits);
    let (gt, _) = write_truth(&held, work, m.size)?;
    let mut sampler = SceneSampler::from_file(weights, m.base.clone(), dev)?;
    let mut rows: Vec<RatioScore> = Vec::new();
    let mut score_at = |g: Grounding, rows: &mut Vec<RatioScore>| -> Result<(), Failure> {
        if let SceneSampler::Branch(b) = &mut sampler {
            b.layout_guidance = g.guidance;
            b.order_guidance = g.order;
            b.guided_ratio = g.guided;
        }
        let p = Protocol {
            m,
            dev,
            seed,
            steps: t.steps,
            batch: 8,
            ratio: Some(g.ratio),
            score_only: false,
        };
        // Unguided candidates keep the folder names of runs tuned before the guidances.
        let mut name = format!("ratio-{}", g.ratio);
        if g.guidance != 1.0 {
            name += &format!("-guidance-{}", g.guidance);
        }
        if g.order != 0.0 {
            name += &format!("-order-{}", g.order);
        }
        if g.guided != 1.0 {
            name += &format!("-guided-{}", g.guided);
        }
        let dir = work.join(&name);
        p.generate(Some(&sampler), &held, &dir)?;
        let s = score(&work.join("eval"), &name, &dir, &gt, 0.0, Some(g.ratio))?;
        rows.push(RatioScore {
            ratio: g.ratio,
            guidance: g.guidance,
            order: g.order,
            guided: g.guided,
            occ_f1: s.summary.occ_f1,
            order_accuracy: s.summary.order_accuracy,
            mask_miou: s.summary.mask_miou,
        });
        Ok(())
    };
    for &ratio in t.ratios {
        score_at(Grounding::ratio(ratio), &mut rows)?;
    }
    let ratio = best(&rows).ratio;
    for &guidance in t.guidances.iter().filter(|g| **g != 1.0) {
        score_at(
            Grounding {
                guidance,
                ..Grounding::ratio(ratio)
            },
            &mut rows,
        )?;
    }
    let chosen = best(&rows);
    for &order in t.orders.iter().filter(|o| **o != 0.0) {
        score_at(Grounding { order, ..chosen }, &mut rows)?;
    }
    let chosen = best(&rows);
    if chosen.guidance != 1.0 || chosen.order != 0.0 {
        for &guided in t.guided.iter().filter(|g| **g != 1.0) {
            score_at(Grounding { guided, ..chosen }, &mut rows)?;
        }
    }
    Ok((best(&rows), rows))
}

/// Records the choice `g` and every candidate's scores in a branch's metadata (its
/// `layout.json`), where loading the branch reads them.
pub fn record(meta: &mut serde_json::Value, g: Grounding, scores: &[RatioScore], t: &Tuning) {
    meta["grounding_ratio"] = g.ratio.into();
    meta["layout_guidance"] = g.guidance.into();
    meta["order_guidance"] = g.order.into();
    meta["guided_ratio"] = g.guided.into();
    meta["grounding_tuning"] = serde_json::json!({
        "scenes_per_split": t.scenes,
        "steps": t.steps,
        "scores": scores,
    });
}

/// The line that says what was chosen and where it went.
pub fn chosen(g: Grounding, json: &Path) -> String {
    format!(
        "recorded grounding ratio {}, layout guidance {} and order guidance {} (on {} of the steps) in {}",
        g.ratio,
        g.guidance,
        g.order,
        g.guided,
        json.display()
    )
}

/// One line per candidate, for the terminal.
pub fn describe(scores: &[RatioScore]) -> Vec<String> {
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    scores
        .iter()
        .map(|s| {
            format!(
                "grounding ratio {}, layout guidance {}, order guidance {} on {} of the steps: Occ. F1 {}, order accuracy {}, mask mIoU {}",
                s.ratio,
                s.guidance,
                s.order,
                s.guided,
                f(s.occ_f1),
                f(s.order_accuracy),
                f(s.mask_miou)
            )
        })
        .collect()
}

/// The candidate with the best Occ. F1; among equals the cheaper (the smaller ratio, then the
/// smaller guidances, then the shorter interval); the official 0.3 without guidance when there is none.
pub fn best(rows: &[RatioScore]) -> Grounding {
    let key = |r: &RatioScore| r.occ_f1.unwrap_or(f64::NEG_INFINITY);
    let cheaper = |r: &RatioScore, b: &RatioScore| {
        (r.ratio, r.guidance, r.order, r.guided) < (b.ratio, b.guidance, b.order, b.guided)
    };
    rows.iter()
        .reduce(|b, r| {
            if key(r) > key(b) || (key(r) == key(b) && cheaper(r, b)) {
                r
            } else {
                b
            }
        })
        .map_or(Grounding::ratio(OFFICIAL_GROUNDING_RATIO), |r| Grounding {
            ratio: r.ratio,
            guidance: r.guidance,
            order: r.order,
            guided: r.guided,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64, guidance: f64, occ_f1: Option<f64>) -> RatioScore {
        RatioScore {
            ratio,
            guidance,
            order: 0.0,
            guided: 1.0,
            occ_f1,
            order_accuracy: None,
            mask_miou: None,
        }
    }

    fn ratio(r: f64) -> Grounding {
        Grounding::ratio(r)
    }

    #[test]
    fn the_best_occ_f1_wins_and_ties_go_to_the_cheaper_candidate() {
        let best_of = |rows: &[(f64, f64, Option<f64>)]| {
            best(
                &rows
                    .iter()
                    .map(|&(r, g, f)| row(r, g, f))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            best_of(&[(0.3, 1.0, Some(0.5)), (1.0, 1.0, Some(0.6))]),
            ratio(1.0)
        );
        assert_eq!(
            best_of(&[
                (1.0, 1.0, Some(0.6)),
                (0.6, 1.0, Some(0.6)),
                (0.3, 1.0, Some(0.2))
            ]),
            ratio(0.6)
        );
        assert_eq!(
            best_of(&[(0.6, 1.0, None), (1.0, 1.0, Some(0.1))]),
            ratio(1.0)
        );
        assert_eq!(
            best_of(&[(0.6, 1.0, None)]),
            ratio(0.6),
            "a lone candidate stands"
        );
        assert_eq!(best_of(&[]), ratio(OFFICIAL_GROUNDING_RATIO));
        let guided = Grounding {
            guidance: 2.0,
            ..ratio(1.0)
        };
        assert_eq!(
            best_of(&[
                (1.0, 1.0, Some(0.8)),
                (1.0, 2.0, Some(0.9)),
                (1.0, 3.0, Some(0.9))
            ]),
            guided,
            "guidance wins on the score, and the smaller of two equal ones"
        );
        assert_eq!(
            best_of(&[(1.0, 2.0, Some(0.8)), (1.0, 1.0, Some(0.8))]),
            ratio(1.0),
            "no guidance where it gains nothing"
        );
    }
}
