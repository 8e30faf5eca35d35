//! Layout accuracy (DESIGN.md §5, "mIoU / O-mIoU"; OverLayBench).
//!
//! Two families: mask-based, exact on synthetic data, and OverLayBench's box-based one.

use serde::Serialize;
use zlayer_scene::BBox;

/// IoU of two masks; `None` when both are empty.
pub fn mask_iou(a: &[bool], b: &[bool]) -> Option<f64> {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        inter += (x && y) as usize;
        union += (x || y) as usize;
    }
    (union > 0).then(|| inter as f64 / union as f64)
}

/// Mask IoU restricted to a region; `None` when the union inside it is empty.
pub fn region_iou(a: &[bool], b: &[bool], region: &[bool]) -> Option<f64> {
    let (mut inter, mut union) = (0usize, 0usize);
    for ((&x, &y), &r) in a.iter().zip(b).zip(region) {
        if r {
            inter += (x && y) as usize;
            union += (x || y) as usize;
        }
    }
    (union > 0).then(|| inter as f64 / union as f64)
}

/// The mean of the values present; `None` if there are none.
pub fn mean(v: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (s, n) = v
        .into_iter()
        .flatten()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// One box with its category, for OverLayBench matching.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledBox {
    /// The box.
    pub bbox: BBox,
    /// Category; boxes match only within a category.
    pub category: String,
}

/// Box-based scores of one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BoxScore {
    /// Mean IoU over ground-truth boxes (unmatched ones score 0); `None` without boxes.
    pub miou: Option<f64>,
    /// Mean IoU over overlapping ground-truth pairs of the intersection boxes; `None` without pairs.
    pub o_miou: Option<f64>,
}

/// OverLayBench matching: within each category, pairs are taken greedily by descending IoU,
/// one-to-one. Returns, per ground-truth box, the index of its predicted box.
pub fn greedy_match(gt: &[LabeledBox], pred: &[LabeledBox]) -> Vec<Option<usize>> {
    let mut cand: Vec<(f64, usize, usize)> = Vec::new();
    for (i, g) in gt.iter().enumerate() {
        for (j, p) in pred.iter().enumerate() {
            let iou = g.bbox.iou(p.bbox);
            if g.category == p.category && iou > 0.0 {
                cand.push((iou, i, j));
            }
        }
    }
    // Descending IoU; ties by index so the result is deterministic.
    cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut matched = vec![None; gt.len()];
    let mut used = vec![false; pred.len()];
    for (_, i, j) in cand {
        if matched[i].is_none() && !used[j] {
            matched[i] = Some(j);
            used[j] = true;
        }
    }
    matched
}

/// OverLayBench mIoU and O-mIoU of one image. O-mIoU compares, for every pair of
/// ground-truth boxes that intersect, their intersection box with the intersection of the
/// matched predicted boxes (0 if either is unmatched or the predicted ones do not meet).
pub fn box_scores(gt: &[LabeledBox], pred: &[LabeledBox]) -> BoxScore {
    let m = greedy_match(gt, pred);
    let miou =
        mean((0..gt.len()).map(|i| Some(m[i].map_or(0.0, |j| gt[i].bbox.iou(pred[j].bbox)))));
    let mut pairs = Vec::new();
    for i in 0..gt.len() {
        for j in i + 1..gt.len() {
            if let Some(g) = gt[i].bbox.intersect(gt[j].bbox) {
                let p = match (m[i], m[j]) {
                    (Some(a), Some(b)) => pred[a].bbox.intersect(pred[b].bbox),
                    _ => None,
                };
                pairs.push(Some(p.map_or(0.0, |p| g.iou(p))));
            }
        }
    }
    BoxScore {
        miou,
        o_miou: mean(pairs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(x1: f64, y1: f64, x2: f64, y2: f64, c: &str) -> LabeledBox {
        LabeledBox {
            bbox: BBox::new(x1, y1, x2, y2),
            category: c.into(),
        }
    }

    #[test]
    fn mask_ious_by_hand() {
        let a = [true, true, false, false];
        let b = [false, true, true, false];
        assert_eq!(mask_iou(&a, &b), Some(1.0 / 3.0));
        assert_eq!(mask_iou(&[false; 2], &[false; 2]), None);
        assert_eq!(region_iou(&a, &b, &[false, true, true, true]), Some(0.5));
    }

    #[test]
    fn greedy_matching_is_one_to_one_within_category() {
        // Two cats and one dog; the better-overlapping prediction wins the first cat.
        let gt = [
            lb(0., 0., 10., 10., "cat"),
            lb(5., 0., 15., 10., "cat"),
            lb(0., 0., 10., 10., "dog"),
        ];
        let pred = [lb(5., 0., 15., 10., "cat"), lb(1., 0., 11., 10., "cat")];
        assert_eq!(greedy_match(&gt, &pred), vec![Some(1), Some(0), None]);
        let s = box_scores(&gt, &pred);
        // IoUs: cat0–pred1 = 9/11, cat1–pred0 = 1, dog unmatched = 0.
        assert!((s.miou.unwrap() - (9.0 / 11.0 + 1.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn o_miou_by_hand() {
        let gt = [lb(0., 0., 10., 10., "a"), lb(5., 0., 15., 10., "b")];
        // Predictions shifted right by 1: their intersection [6, 0, 11, 10] against the
        // truth's [5, 0, 10, 10]: 40 shared of 60 → 2/3.
        let pred = [lb(1., 0., 11., 10., "a"), lb(6., 0., 16., 10., "b")];
        let s = box_scores(&gt, &pred);
        assert!((s.o_miou.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Perfect predictions score 1 on both.
        let p = box_scores(&gt, &gt);
        assert_eq!((p.miou, p.o_miou), (Some(1.0), Some(1.0)));
    }
}
