//! The order-flip test of `zlayer eval --suite paper`: swap the declared order of one
//! overlapping pair per scene, generate again from the same noise, and count how often the
//! generated order of that pair flips with it.
//!
//! Only a pair adjacent in depth is swapped (ranks r and r + 1), so no other declared pair
//! changes; among those, the one with the largest amodal overlap. A pair counts when both
//! real renders show its order (see `zlayer_metrics::eval::shown_pairs`).

use crate::Failure;
use crate::protocol::name;
use std::path::Path;
use zlayer_metrics::eval::{Prediction, load_gt, pixel_owners, read_rgb, shown_pairs, targets};
use zlayer_metrics::occlusion::front_by_ownership;
use zlayer_synth::SynthScene;
use zlayer_synth::render::render;

/// The scene with one adjacent overlapping pair's depth swapped, and that pair as
/// (front, back) before the swap; `None` when no declared pair is adjacent in depth.
pub fn flip(s: &SynthScene) -> Option<(SynthScene, (usize, usize))> {
    let rank = |k: usize| s.spec.instances[k].rank;
    let overlap = |i: usize, j: usize| {
        s.amodal[i]
            .iter()
            .zip(&s.amodal[j])
            .filter(|&(&a, &b)| a >= 128 && b >= 128)
            .count()
    };
    let (i, j) = s
        .scene
        .instances
        .iter()
        .enumerate()
        .flat_map(|(i, inst)| {
            inst.occludes
                .iter()
                .filter_map(move |id| id.parse::<usize>().ok().map(|j| (i, j)))
        })
        .filter(|&(i, j)| rank(j) == rank(i) + 1)
        .max_by_key(|&(i, j)| (overlap(i, j), std::cmp::Reverse((i, j))))?;
    let mut spec = s.spec.clone();
    spec.instances[i].rank = rank(j);
    spec.instances[j].rank = rank(i);
    Some((render(&spec), (i, j)))
}

/// A training batch of `pairs` flip pairs: each scene followed by itself with one adjacent
/// overlapping pair's order swapped ([`flip`]), rendered exactly, so that one batch shows
/// the branch both orders of the same boxes. The scenes are the first flippable ones of
/// candidates `first .. first + 2·pairs`; a shortfall is filled by unflippable candidates,
/// each twice.
pub fn paired_batch(
    seed: u64,
    first: u64,
    pairs: usize,
    size: u32,
    splits: &[zlayer_synth::Split],
) -> Vec<SynthScene> {
    let candidates = crate::data::scenes(seed, first, 2 * pairs, size, splits);
    let (mut flippable, mut rest) = (Vec::new(), Vec::new());
    for s in candidates {
        match flip(&s) {
            Some((f, _)) if flippable.len() < pairs => flippable.push((s, f)),
            _ => rest.push(s),
        }
    }
    let fill = rest.into_iter().map(|s| (s.clone(), s));
    flippable
        .into_iter()
        .chain(fill)
        .take(pairs)
        .flat_map(|(a, b)| [a, b])
        .collect()
}

/// Counts of one method's flip test.
#[derive(Debug, Default, serde::Serialize)]
pub struct FlipScore {
    /// Pairs whose order both real renders show.
    pub pairs: usize,
    /// Pairs whose generated front differs between the two images.
    pub flipped: usize,
    /// Pairs generated in the declared order both times.
    pub both_right: usize,
}

impl FlipScore {
    /// Share of pairs whose generated order flipped.
    pub fn rate(&self) -> Option<f64> {
        (self.pairs > 0).then(|| self.flipped as f64 / self.pairs as f64)
    }
}

/// Scores one method: `orig`/`flipped` hold its images of the original and flipped scenes
/// (named as the ground-truth folders under `gt`/`flip_gt`); `pairs[k]` is scene k's
/// swapped pair.
pub fn score(
    gt: &Path,
    flip_gt: &Path,
    orig: &Path,
    flipped: &Path,
    pairs: &[Option<(usize, usize)>],
) -> Result<FlipScore, Failure> {
    let user = |e: zlayer_metrics::eval::EvalError| Failure::User(e.to_string());
    let mut s = FlipScore::default();
    for (k, pair) in pairs.iter().enumerate() {
        let Some((i, j)) = *pair else { continue };
        let (a, b) = (
            load_gt(&gt.join(name(k))).map_err(user)?,
            load_gt(&flip_gt.join(name(k))).map_err(user)?,
        );
        let t = targets(&a.scene).map_err(Failure::User)?;
        let before = shown_pairs(&a, &[(i, j)], &t);
        if before.is_empty() || shown_pairs(&b, &[(j, i)], &t).is_empty() {
            continue;
        }
        let region = &before[0].1;
        let front = |dir: &Path, g| -> Result<Option<usize>, Failure> {
            let (_, _, image) = read_rgb(&dir.join(format!("{}.png", name(k)))).map_err(user)?;
            let p = Prediction {
                image,
                ..Default::default()
            };
            Ok(front_by_ownership(&pixel_owners(g, &p, &t), region, i, j))
        };
        let (f0, f1) = (front(orig, &a)?, front(flipped, &b)?);
        s.pairs += 1;
        s.flipped += usize::from(f0.is_some() && f1.is_some() && f0 != f1);
        s.both_right += usize::from(f0 == Some(i) && f1 == Some(j));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zlayer_synth::sample::{Params, Split};
    use zlayer_synth::store::scene_at;

    #[test]
    fn a_flip_swaps_one_adjacent_pair_and_keeps_every_other_order() {
        let mut flipped = 0;
        for k in 0..60 {
            let s = scene_at(7, k, &Params::new(Split::Complex, 64));
            let Some((f, (i, j))) = flip(&s) else {
                continue;
            };
            flipped += 1;
            assert!(s.scene.instances[i].occludes.contains(&j.to_string()));
            assert!(f.scene.instances[j].occludes.contains(&i.to_string()));
            assert!(!f.scene.instances[i].occludes.contains(&j.to_string()));
            let n = s.spec.instances.len();
            for a in 0..n {
                for b in 0..n {
                    if (a, b) != (i, j) && (a, b) != (j, i) {
                        let was = s.scene.instances[a].occludes.contains(&b.to_string());
                        let is = f.scene.instances[a].occludes.contains(&b.to_string());
                        assert_eq!(was, is, "scene {k}: pair ({a}, {b}) changed");
                    }
                }
            }
            assert_eq!(s.amodal, f.amodal, "scene {k}: shapes moved");
        }
        assert!(
            flipped > 40,
            "only {flipped} of 60 complex scenes had an adjacent pair"
        );
    }

    #[test]
    fn a_paired_batch_holds_each_scene_and_its_flip() {
        let batch = paired_batch(5, 40, 4, 64, &[Split::Complex, Split::Regular]);
        assert_eq!(batch.len(), 8);
        for pair in batch.chunks(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert_eq!(a.amodal, b.amodal, "the same boxes and shapes");
            let (f, _) = flip(a).expect("flippable candidates come first");
            assert_eq!(f.scene, b.scene, "the second is the first flipped");
            assert_ne!(a.scene, b.scene);
        }
        assert_eq!(
            batch,
            paired_batch(5, 40, 4, 64, &[Split::Complex, Split::Regular])
        );
        // Simple scenes of one object cannot flip: the batch is filled with doubles.
        let simple = paired_batch(5, 0, 6, 64, &[Split::Simple]);
        assert_eq!(simple.len(), 12);
        assert!(
            simple
                .chunks(2)
                .all(|p| flip(&p[0]).is_some() || p[0] == p[1])
        );
    }

    #[test]
    fn the_real_renders_flip_every_counted_pair_and_a_frozen_image_none() {
        let dir = std::env::temp_dir().join(format!("zlayer-flip-{}", std::process::id()));
        let held: Vec<SynthScene> = (0..12)
            .map(|k| scene_at(3, k, &Params::new(Split::Complex, 64)))
            .collect();
        let flips: Vec<_> = held.iter().map(flip).collect();
        let pairs: Vec<_> = flips.iter().map(|f| f.as_ref().map(|f| f.1)).collect();
        let swapped: Vec<SynthScene> = held
            .iter()
            .zip(&flips)
            .map(|(s, f)| f.as_ref().map_or_else(|| s.clone(), |f| f.0.clone()))
            .collect();
        let (gt, render) = crate::protocol::write_truth(&held, &dir.join("a"), 64).unwrap();
        let (fgt, frender) = crate::protocol::write_truth(&swapped, &dir.join("b"), 64).unwrap();
        let s = score(&gt, &fgt, &render, &frender, &pairs).unwrap();
        assert!(s.pairs >= 8, "{s:?}");
        assert_eq!((s.flipped, s.both_right), (s.pairs, s.pairs));
        // The same image for both orders: nothing flips, and no pair is right both times.
        let s = score(&gt, &fgt, &render, &render, &pairs).unwrap();
        assert_eq!((s.flipped, s.both_right), (0, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
