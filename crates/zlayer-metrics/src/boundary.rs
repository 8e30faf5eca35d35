//! Boundary and halo quality (DESIGN.md §5, "Boundary").
//!
//! Latent compositing leaves halos near mask edges; these measure them: error as a function
//! of signed distance to the boundary (PELC's curve), L1 in a band around the edge, and two
//! boundary-focused mask scores, DAVIS's boundary F and Boundary IoU.

use crate::grid::{inner_boundary, signed_distance, sq_distance_to};

/// One bin of the error-vs-distance curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DistanceBin {
    /// Signed distance in pixels (negative inside the mask), rounded to the nearest integer.
    pub distance: i32,
    /// Mean error of the pixels in the bin.
    pub mean_error: f64,
    /// How many pixels.
    pub count: usize,
}

/// Error sums and pixel counts per integer signed distance in [−max, max].
#[derive(Debug, Clone)]
pub struct DistanceHistogram {
    max: i32,
    sum: Vec<f64>,
    count: Vec<usize>,
}

impl DistanceHistogram {
    /// Empty bins for |d| ≤ `max`.
    pub fn new(max: i32) -> Self {
        let n = (2 * max + 1) as usize;
        Self {
            max,
            sum: vec![0.0; n],
            count: vec![0; n],
        }
    }

    /// Adds `count` pixels of total error `sum` at distance `d` (outside the range: ignored).
    pub fn add(&mut self, d: i32, sum: f64, count: usize) {
        if d.abs() <= self.max {
            let k = (d + self.max) as usize;
            self.sum[k] += sum;
            self.count[k] += count;
        }
    }

    /// The non-empty bins with their mean error.
    pub fn bins(&self) -> Vec<DistanceBin> {
        (0..self.count.len())
            .filter(|&k| self.count[k] > 0)
            .map(|k| DistanceBin {
                distance: k as i32 - self.max,
                mean_error: self.sum[k] / self.count[k] as f64,
                count: self.count[k],
            })
            .collect()
    }
}

/// Mean per-pixel error binned by signed distance to the mask boundary, for |d| ≤ `max`.
pub fn error_by_distance(
    err: &[f64],
    mask: &[bool],
    w: usize,
    h: usize,
    max: i32,
) -> Vec<DistanceBin> {
    let mut hist = DistanceHistogram::new(max);
    for (d, &e) in signed_distance(mask, w, h).iter().zip(err) {
        if d.is_finite() {
            hist.add(d.round() as i32, e, 1);
        }
    }
    hist.bins()
}

/// Mean error over the halo band: pixels within `band` px of the boundary, on either side.
pub fn halo_l1(err: &[f64], mask: &[bool], w: usize, h: usize, band: f64) -> Option<f64> {
    let sd = signed_distance(mask, w, h);
    let (s, n) = sd
        .iter()
        .zip(err)
        .filter(|(d, _)| d.abs() <= band)
        .fold((0.0, 0usize), |(s, n), (_, e)| (s + e, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Pixels within `r` px of any pixel of `set`.
fn dilate(set: &[bool], w: usize, h: usize, r: f64) -> Vec<bool> {
    sq_distance_to(set, w, h)
        .iter()
        .map(|&d| d <= r * r)
        .collect()
}

/// DAVIS boundary F: boundary pixels of each mask matched within ceil(0.008 · diagonal) px;
/// F = 2PR / (P + R). Both boundaries empty gives 1, one empty 0.
pub fn boundary_f(pred: &[bool], gt: &[bool], w: usize, h: usize) -> f64 {
    let tol = (0.008 * ((w * w + h * h) as f64).sqrt()).ceil();
    let (bp, bg) = (inner_boundary(pred, w, h), inner_boundary(gt, w, h));
    let (np, ng) = (
        bp.iter().filter(|&&b| b).count(),
        bg.iter().filter(|&&b| b).count(),
    );
    match (np, ng) {
        (0, 0) => return 1.0,
        (0, _) | (_, 0) => return 0.0,
        _ => {}
    }
    let (near_g, near_p) = (dilate(&bg, w, h, tol), dilate(&bp, w, h, tol));
    let precision = (0..w * h).filter(|&p| bp[p] && near_g[p]).count() as f64 / np as f64;
    let recall = (0..w * h).filter(|&p| bg[p] && near_p[p]).count() as f64 / ng as f64;
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// The part of a mask within `d` px of its contour (outside the image counts as outside).
fn inner_band(mask: &[bool], w: usize, h: usize, d: f64) -> Vec<bool> {
    // Pad by one pixel of background so the image border is a contour too.
    let (pw, ph) = (w + 2, h + 2);
    let mut outside = vec![true; pw * ph];
    for y in 0..h {
        for x in 0..w {
            outside[(y + 1) * pw + x + 1] = !mask[y * w + x];
        }
    }
    let dist = sq_distance_to(&outside, pw, ph);
    (0..w * h)
        .map(|p| mask[p] && dist[(p / w + 1) * pw + p % w + 1] <= d * d)
        .collect()
}

/// Boundary IoU (Cheng et al. 2021): IoU of the two masks' inner bands of width
/// d = max(1, round(0.02 · diagonal)). Both empty gives 1.
pub fn boundary_iou(pred: &[bool], gt: &[bool], w: usize, h: usize) -> f64 {
    let d = (0.02 * ((w * w + h * h) as f64).sqrt()).round().max(1.0);
    crate::layout::mask_iou(&inner_band(pred, w, h, d), &inner_band(gt, w, h, d)).unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(w: usize, x0: usize, x1: usize) -> Vec<bool> {
        (0..w * w)
            .map(|p| (x0..x1).contains(&(p % w)) && (x0..x1).contains(&(p / w)))
            .collect()
    }

    #[test]
    fn identical_masks_are_perfect() {
        let m = square(20, 4, 12);
        assert_eq!(boundary_f(&m, &m, 20, 20), 1.0);
        assert_eq!(boundary_iou(&m, &m, 20, 20), 1.0);
        assert_eq!(halo_l1(&[0.0; 400], &m, 20, 20, 3.0), Some(0.0));
    }

    #[test]
    fn boundary_f_tolerates_one_pixel_at_100px() {
        // diagonal 141 → tolerance ceil(1.13) = 2 px: a 1-px shift is fully matched.
        let (a, b) = (square(100, 20, 60), square(100, 21, 61));
        assert_eq!(boundary_f(&a, &b, 100, 100), 1.0);
        let far = square(100, 30, 70);
        assert!(boundary_f(&a, &far, 100, 100) < 0.5);
    }

    #[test]
    fn boundary_iou_by_hand() {
        // 10×10 image: d = max(1, round(0.28)) = 1. A 4×4 square's band is its 12 edge pixels;
        // a 6×6 square's band is its 20 edge pixels; the 4×4 band lies inside the 6×6 interior.
        let small = square(10, 3, 7);
        let big = square(10, 2, 8);
        assert_eq!(boundary_iou(&small, &big, 10, 10), 0.0);
        assert_eq!(boundary_iou(&small, &small, 10, 10), 1.0);
    }

    #[test]
    fn error_bins_by_signed_distance() {
        // 1×6 strip, mask on the left half; the error is 1 only just outside the edge.
        let mask = [true, true, true, false, false, false];
        let err = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let bins = error_by_distance(&err, &mask, 6, 1, 3);
        let at = |d: i32| bins.iter().find(|b| b.distance == d).unwrap();
        assert_eq!((at(1).mean_error, at(1).count), (1.0, 1));
        assert_eq!((at(-1).mean_error, at(2).mean_error), (0.0, 0.0));
        assert_eq!(halo_l1(&err, &mask, 6, 1, 1.0), Some(0.5));
    }
}
