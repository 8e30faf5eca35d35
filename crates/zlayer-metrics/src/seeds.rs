//! Several training seeds of one recipe, summed up: each measure's mean and standard
//! deviation over the seeds, and a bootstrap interval over scenes for the difference between
//! two methods.
//!
//! The per-scene scores come from the `per_scene.csv` that `zlayer eval` writes
//! ([`crate::summary::csv`]); every measure is recomputed from them the way
//! [`crate::summary::summarize`] defines it, so a resampled set of scenes is scored exactly as
//! a run over those scenes would be.

use crate::layout::mean;
use zlayer_scene::rng::Rng;

/// A measure of the paper's tables, recomputed from per-scene scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Pairwise order accuracy over all pairs (micro average).
    OrderAccuracy,
    /// Occ. F1, averaged over images.
    OccF1,
    /// Dep. WHDR (percent), averaged over images with pairs.
    Whdr,
    /// Mask mIoU.
    MaskMiou,
    /// Mask O-mIoU.
    MaskOMiou,
    /// DAVIS boundary F.
    BoundaryF,
}

impl Measure {
    /// Every measure, in the tables' column order.
    pub const ALL: [Measure; 6] = [
        Measure::MaskMiou,
        Measure::MaskOMiou,
        Measure::OrderAccuracy,
        Measure::OccF1,
        Measure::Whdr,
        Measure::BoundaryF,
    ];

    /// The column heading.
    pub fn label(self) -> &'static str {
        match self {
            Measure::OrderAccuracy => "order acc.",
            Measure::OccF1 => "Occ. F1",
            Measure::Whdr => "WHDR (%)",
            Measure::MaskMiou => "mIoU",
            Measure::MaskOMiou => "O-mIoU",
            Measure::BoundaryF => "boundary F",
        }
    }

    /// Its column in per_scene.csv (order accuracy is summed from `pairs` and `correct`).
    fn column(self) -> &'static str {
        match self {
            Measure::OrderAccuracy => "order_accuracy",
            Measure::OccF1 => "occ_f1",
            Measure::Whdr => "whdr",
            Measure::MaskMiou => "mask_miou",
            Measure::MaskOMiou => "mask_o_miou",
            Measure::BoundaryF => "boundary_f",
        }
    }
}

/// One method's per-scene scores in one run, as read from per_scene.csv.
#[derive(Debug, Clone)]
pub struct SceneTable {
    scenes: Vec<String>,
    pairs: Vec<u64>,
    correct: Vec<u64>,
    /// One column per [`Measure::ALL`] entry, blank cells as `None`.
    columns: Vec<Vec<Option<f64>>>,
}

impl SceneTable {
    /// Parses per_scene.csv; errors name the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().ok_or("empty file")?.split(',').collect();
        let at = |name: &str| {
            header.iter().position(|h| *h == name).ok_or_else(|| {
                format!("no column {name:?} in the header (is this a zlayer eval per_scene.csv?)")
            })
        };
        let (scene, pairs, correct) = (at("scene")?, at("pairs")?, at("correct")?);
        let cols: Vec<usize> = Measure::ALL
            .iter()
            .map(|m| at(m.column()))
            .collect::<Result<_, _>>()?;
        let mut t = SceneTable {
            scenes: Vec::new(),
            pairs: Vec::new(),
            correct: Vec::new(),
            columns: vec![Vec::new(); cols.len()],
        };
        for (k, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let cells: Vec<&str> = line.split(',').collect();
            let line_no = k + 2;
            if cells.len() != header.len() {
                return Err(format!(
                    "line {line_no}: {} cells, the header has {}",
                    cells.len(),
                    header.len()
                ));
            }
            let count = |c: usize| {
                cells[c].parse::<u64>().map_err(|_| {
                    format!(
                        "line {line_no}, column {:?}: {:?} is not a count",
                        header[c], cells[c]
                    )
                })
            };
            t.scenes.push(cells[scene].to_string());
            t.pairs.push(count(pairs)?);
            t.correct.push(count(correct)?);
            for (col, &c) in t.columns.iter_mut().zip(&cols) {
                col.push(match cells[c] {
                    "" => None,
                    v => Some(v.parse::<f64>().map_err(|_| {
                        format!(
                            "line {line_no}, column {:?}: {v:?} is not a number",
                            header[c]
                        )
                    })?),
                });
            }
        }
        Ok(t)
    }

    /// The scenes' names, in file order.
    pub fn scenes(&self) -> &[String] {
        &self.scenes
    }

    /// The measure over the scenes `idx` (a scene listed twice counts twice), as
    /// [`crate::summary::summarize`] computes it over a run.
    pub fn measure(&self, m: Measure, idx: &[usize]) -> Option<f64> {
        if m == Measure::OrderAccuracy {
            let (p, c) = idx.iter().fold((0, 0), |(p, c), &i| {
                (p + self.pairs[i], c + self.correct[i])
            });
            return (p > 0).then(|| c as f64 / p as f64);
        }
        let k = Measure::ALL.iter().position(|&x| x == m).unwrap_or(0);
        mean(idx.iter().map(|&i| self.columns[k][i]))
    }

    /// The measure over every scene.
    pub fn whole(&self, m: Measure) -> Option<f64> {
        self.measure(m, &(0..self.scenes.len()).collect::<Vec<_>>())
    }
}

/// Mean and sample standard deviation (divisor n − 1; 0 for a single value).
pub fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    let m = mean(v.iter().map(|&x| Some(x)))?;
    let var = if n > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Some((m, var.sqrt()))
}

/// A difference between two methods: its mean over seeds and a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// Mean over the seeds of (method − reference) on all scenes.
    pub mean: f64,
    /// 2.5th percentile of the bootstrap distribution.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// The difference `method − reference` in measure `m`, averaged over seeds (`method[s]` and
/// `reference[s]` are one seed's tables), with a percentile bootstrap interval: `draws` times
/// the scenes are drawn with replacement, the same draw for every seed and both methods. The
/// interval reflects which scenes were held out, given these seeds; it does not treat the
/// seeds as a sample (with three, their spread is the standard deviation beside it).
///
/// Every table must list the same scenes in the same order. `None` when the measure is
/// undefined on all scenes.
pub fn paired_difference(
    method: &[&SceneTable],
    reference: &[&SceneTable],
    m: Measure,
    draws: usize,
    seed: u64,
) -> Result<Option<Difference>, String> {
    if method.len() != reference.len() || method.is_empty() {
        return Err(format!(
            "{} runs of the method against {} of the reference: give one of each per seed",
            method.len(),
            reference.len()
        ));
    }
    let scenes = method[0].scenes();
    if let Some(t) = method
        .iter()
        .chain(reference)
        .find(|t| t.scenes() != scenes)
    {
        return Err(format!(
            "the runs scored different scenes ({} and {} scenes, or another order): evaluate every seed on the same held-out scenes",
            scenes.len(),
            t.scenes().len()
        ));
    }
    let stat = |idx: &[usize]| -> Option<f64> {
        let d: Option<Vec<f64>> = method
            .iter()
            .zip(reference)
            .map(|(a, b)| Some(a.measure(m, idx)? - b.measure(m, idx)?))
            .collect();
        mean(d?.into_iter().map(Some))
    };
    let all: Vec<usize> = (0..scenes.len()).collect();
    let Some(point) = stat(&all) else {
        return Ok(None);
    };
    let mut rng = Rng::new(seed);
    let mut idx = vec![0; scenes.len()];
    let mut dist: Vec<f64> = (0..draws)
        .filter_map(|_| {
            idx.iter_mut().for_each(|i| *i = rng.below(scenes.len()));
            stat(&idx)
        })
        .collect();
    dist.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if dist.is_empty() {
            return point;
        }
        dist[((q * dist.len() as f64) as usize).min(dist.len() - 1)]
    };
    Ok(Some(Difference {
        mean: point,
        low: pick(0.025),
        high: pick(0.975),
    }))
}
