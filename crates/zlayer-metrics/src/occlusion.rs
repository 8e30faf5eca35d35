//! Occlusion-order metrics (DESIGN.md §5: "Occ. F1", "Dep. WHDR"; InstaOrder).
//!
//! Ground truth is a list of ordered pairs `(front, back)`: the overlapping pairs whose order
//! is declared. A prediction gives, per pair, which instance is in front, or nothing when it
//! cannot tell (then it is wrong for accuracy and WHDR, and predicts no occlusion for F1).

use serde::Serialize;

/// Scores of one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OcclusionScore {
    /// Ordered ground-truth pairs.
    pub pairs: usize,
    /// Pairs predicted in the right order.
    pub correct: usize,
    /// correct / pairs; `None` without pairs.
    pub accuracy: Option<f64>,
    /// InstaOrder Occ. F1 (zero_division = 1).
    pub occ_f1: f64,
    /// Its precision.
    pub precision: f64,
    /// Its recall.
    pub recall: f64,
    /// Dep. WHDR in percent; `None` without pairs.
    pub whdr: Option<f64>,
}

/// Scores predictions `pred[k]` (the front instance of pair k, if decided) against
/// ground-truth pairs `gt[k] = (front, back)`.
///
/// - Occ. F1: the N×N matrix with [i, j] = 1 if i occludes j, over the annotated entries
///   (both [i, j] and [j, i] of every pair); binary precision and recall with
///   zero_division = 1, F1 = 2tp / (2tp + fp + fn), 1 when there is nothing to find.
/// - Dep. WHDR = Σ 1[pred ≠ gt]·w / Σ w × 100 with w = 2 / count; every synthetic pair is
///   annotated once (count = 1).
pub fn score(gt: &[(usize, usize)], pred: &[Option<usize>]) -> OcclusionScore {
    assert_eq!(gt.len(), pred.len(), "one prediction per ground-truth pair");
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    let mut correct = 0;
    for (&(front, back), &p) in gt.iter().zip(pred) {
        // Entries [front, back] (truth 1) and [back, front] (truth 0).
        let said_front_back = p == Some(front);
        let said_back_front = p == Some(back);
        if said_front_back {
            tp += 1;
            correct += 1;
        } else {
            fn_ += 1;
        }
        if said_back_front {
            fp += 1;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let occ_f1 = ratio(2 * tp, 2 * tp + fp + fn_);
    let n = gt.len();
    let w = 2.0; // 2 / count, count = 1
    OcclusionScore {
        pairs: n,
        correct,
        accuracy: (n > 0).then(|| correct as f64 / n as f64),
        occ_f1,
        precision,
        recall,
        whdr: (n > 0).then(|| (n - correct) as f64 * w / (n as f64 * w) * 100.0),
    }
}

/// How many of the region's pixels `labels` gives to instance i and to instance j.
pub fn ownership(labels: &[Option<usize>], region: &[bool], i: usize, j: usize) -> (usize, usize) {
    let (mut a, mut b) = (0usize, 0usize);
    for (l, &r) in labels.iter().zip(region) {
        if r {
            match *l {
                Some(k) if k == i => a += 1,
                Some(k) if k == j => b += 1,
                _ => {}
            }
        }
    }
    (a, b)
}

/// The predicted front instance of pair (i, j): the one owning more of the region's pixels,
/// `None` on a tie. `labels[p]` is the instance a segmenter gave pixel p.
pub fn front_by_ownership(
    labels: &[Option<usize>],
    region: &[bool],
    i: usize,
    j: usize,
) -> Option<usize> {
    let (a, b) = ownership(labels, region, i, j);
    match a.cmp(&b) {
        std::cmp::Ordering::Greater => Some(i),
        std::cmp::Ordering::Less => Some(j),
        std::cmp::Ordering::Equal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_order_scores_perfectly() {
        let gt = [(0, 1), (2, 1), (0, 2)];
        let s = score(&gt, &[Some(0), Some(2), Some(0)]);
        assert_eq!(
            (s.correct, s.accuracy, s.occ_f1, s.whdr),
            (3, Some(1.0), 1.0, Some(0.0))
        );
    }

    #[test]
    fn one_swapped_pair_moves_only_its_terms() {
        // Three pairs, the second swapped: tp 2, fp 1 ([1, 2] predicted), fn 1 ([2, 1] missed).
        let gt = [(0, 1), (2, 1), (0, 2)];
        let s = score(&gt, &[Some(0), Some(1), Some(0)]);
        assert_eq!(s.correct, 2);
        assert_eq!(s.precision, 2.0 / 3.0);
        assert_eq!(s.recall, 2.0 / 3.0);
        assert_eq!(s.occ_f1, 4.0 / 6.0);
        assert!((s.whdr.unwrap() - 100.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn undecided_pairs_are_misses_not_false_alarms() {
        let s = score(&[(0, 1)], &[None]);
        assert_eq!(
            (s.correct, s.precision, s.recall, s.occ_f1),
            (0, 1.0, 0.0, 0.0)
        );
        let none = score(&[], &[]);
        assert_eq!((none.accuracy, none.occ_f1, none.whdr), (None, 1.0, None));
    }

    #[test]
    fn ownership_decides_the_front() {
        let labels = [Some(0), Some(1), Some(1), None, Some(0)];
        let region = [true, true, true, true, false];
        assert_eq!(front_by_ownership(&labels, &region, 0, 1), Some(1));
        assert_eq!(
            front_by_ownership(&labels, &[true, true, false, false, false], 0, 1),
            None
        );
    }
}
