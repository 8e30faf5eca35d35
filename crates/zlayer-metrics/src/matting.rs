//! Alpha-matting errors: SAD, MSE, Grad and Conn (DESIGN.md §5, "Matting").
//!
//! Definitions follow the DIM protocol as implemented by `mmeval` 0.2 (the pip-installable
//! code closest to the DIM MATLAB reference), which `../shared/fixtures/matting-reference`
//! was computed with and which the tests reproduce to 1e-6 relative. Alphas are in [0, 1].
//! The region is the trimap's unknown band (value 128) or the whole image.
//! Differences from the DIM MATLAB code, as documented by that fixture: the Grad filter border
//! (replicate here) and the Conn threshold bookkeeping; zlayer matches mmeval.

/// Where errors are summed.
#[derive(Debug, Clone, Copy)]
pub enum Region<'a> {
    /// Pixels whose trimap value is 128.
    Unknown(&'a [u8]),
    /// Every pixel (the whole-image variant).
    Whole,
}

impl Region<'_> {
    fn contains(&self, p: usize) -> bool {
        match self {
            Region::Unknown(t) => t[p] == 128,
            Region::Whole => true,
        }
    }
}

/// The four matting errors of one image.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Matting {
    /// Sum of absolute differences / 1000.
    pub sad: f64,
    /// Mean squared error over the region.
    pub mse: f64,
    /// Gradient error / 1000.
    pub grad: f64,
    /// Connectivity error / 1000.
    pub conn: f64,
}

/// All four errors of a `w × h` prediction against the ground truth.
pub fn matting(pred: &[f64], gt: &[f64], w: usize, h: usize, region: Region) -> Matting {
    matting_regions(pred, gt, w, h, &[region])[0]
}

/// All four errors over several regions at once: the gradient and connectivity maps, which
/// do not depend on the region, are computed once.
pub fn matting_regions(
    pred: &[f64],
    gt: &[f64],
    w: usize,
    h: usize,
    regions: &[Region],
) -> Vec<Matting> {
    let (gp, gg) = grad_maps(pred, gt, w, h);
    let (pp, pg) = conn_maps(pred, gt, w, h);
    let sum = |r: &Region, f: &dyn Fn(usize) -> f64| {
        (0..w * h).filter(|&p| r.contains(p)).map(f).sum::<f64>()
    };
    regions
        .iter()
        .map(|r| Matting {
            sad: sad(pred, gt, *r),
            mse: mse(pred, gt, *r),
            grad: sum(r, &|p| (gp[p] - gg[p]).powi(2)) / 1000.0,
            conn: sum(r, &|p| (pp[p] - pg[p]).abs()) / 1000.0,
        })
        .collect()
}

/// SAD = Σ_U |p − g| / 1000.
pub fn sad(pred: &[f64], gt: &[f64], region: Region) -> f64 {
    (0..gt.len())
        .filter(|&p| region.contains(p))
        .map(|p| (pred[p] - gt[p]).abs())
        .sum::<f64>()
        / 1000.0
}

/// MSE = Σ_U (p − g)² / |U|; 0 when U is empty.
pub fn mse(pred: &[f64], gt: &[f64], region: Region) -> f64 {
    let (sum, n) = (0..gt.len())
        .filter(|&p| region.contains(p))
        .fold((0.0, 0usize), |(s, n), p| {
            (s + (pred[p] - gt[p]).powi(2), n + 1)
        });
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// The 9×9 Gaussian-derivative kernel hx(i, j) = G(u_i)·G′(u_j), σ = 1.4, unit Frobenius
/// norm, as its two separable factors (G, G′ / norm). Its half size,
/// ceil(σ·sqrt(−2 ln(√(2π)·σ·0.01))) = 4, is the DIM reference's.
fn gauss_factors(sigma: f64) -> (usize, Vec<f64>, Vec<f64>) {
    let half = (sigma * (-2.0 * ((2.0 * std::f64::consts::PI).sqrt() * sigma * 1e-2).ln()).sqrt())
        .ceil() as usize;
    let g = |x: f64| {
        (-x * x / (2.0 * sigma * sigma)).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt())
    };
    let u: Vec<f64> = (0..2 * half + 1).map(|i| i as f64 - half as f64).collect();
    let gs: Vec<f64> = u.iter().map(|&x| g(x)).collect();
    let ds: Vec<f64> = u.iter().map(|&x| -x * g(x) / (sigma * sigma)).collect();
    // ‖G ⊗ G′‖_F = ‖G‖·‖G′‖.
    let norm =
        gs.iter().map(|v| v * v).sum::<f64>().sqrt() * ds.iter().map(|v| v * v).sum::<f64>().sqrt();
    (half, gs, ds.iter().map(|v| v / norm).collect())
}

/// Correlates rows with `kx` and then columns with `ky`, replicate border.
fn separable(img: &[f64], w: usize, h: usize, half: usize, kx: &[f64], ky: &[f64]) -> Vec<f64> {
    let at = |v: usize, d: usize, n: usize| (v + d).saturating_sub(half).min(n - 1);
    let mut rows = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = kx
                .iter()
                .enumerate()
                .map(|(j, k)| k * img[y * w + at(x, j, w)])
                .sum();
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = ky
                .iter()
                .enumerate()
                .map(|(i, k)| k * rows[at(y, i, h) * w + x])
                .sum();
        }
    }
    out
}

/// Gradient magnitude with hx and hy = hxᵀ: hx is G′ along rows and G along columns.
fn gauss_gradient(img: &[f64], w: usize, h: usize) -> Vec<f64> {
    let (half, g, dg) = gauss_factors(1.4);
    let gx = separable(img, w, h, half, &dg, &g);
    let gy = separable(img, w, h, half, &g, &dg);
    gx.iter()
        .zip(&gy)
        .map(|(a, b)| (a * a + b * b).sqrt())
        .collect()
}

/// Min-max normalisation to [0, 1]; a constant image becomes all zeros (as OpenCV does).
fn min_max(v: &[f64]) -> Vec<f64> {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let span = hi - lo;
    v.iter()
        .map(|&x| {
            if span > f64::EPSILON {
                (x - lo) / span
            } else {
                0.0
            }
        })
        .collect()
}

/// Grad = Σ_U (|∇p| − |∇g|)² / 1000, after min-max normalising p and g, with the 9×9
/// Gaussian-derivative filter of σ = 1.4 and replicate borders.
pub fn grad(pred: &[f64], gt: &[f64], w: usize, h: usize, region: Region) -> f64 {
    matting(pred, gt, w, h, region).grad
}

fn grad_maps(pred: &[f64], gt: &[f64], w: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
    (
        gauss_gradient(&min_max(pred), w, h),
        gauss_gradient(&min_max(gt), w, h),
    )
}

/// Conn: at thresholds t = 0.1, 0.2, …, 1, the largest 4-connected component of
/// (p ≥ t ∧ g ≥ t); a pixel's level l is the threshold just before the first at which it
/// leaves that component (1 if it never does). φ = 1 − d·[d ≥ 0.15] with d = α − l.
/// Conn = Σ_U |φ_p − φ_g| / 1000.
pub fn conn(pred: &[f64], gt: &[f64], w: usize, h: usize, region: Region) -> f64 {
    matting(pred, gt, w, h, region).conn
}

/// φ_p and φ_g of the connectivity error.
fn conn_maps(pred: &[f64], gt: &[f64], w: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
    let mut level = vec![-1.0f64; w * h];
    for i in 1..=10 {
        // i·0.1 in f64, exactly the values numpy.arange(0, 1.1, 0.1) produces.
        let (t, prev) = (i as f64 * 0.1, (i - 1) as f64 * 0.1);
        let both: Vec<bool> = (0..w * h).map(|p| pred[p] >= t && gt[p] >= t).collect();
        let (labels, sizes) = crate::grid::components4(&both, w, h);
        // The first of the largest components, as numpy's argmax picks it.
        let mut keep = 0u32;
        let mut best = 0usize;
        for (k, &s) in sizes.iter().enumerate() {
            if s > best {
                best = s;
                keep = k as u32 + 1;
            }
        }
        for p in 0..w * h {
            if level[p] == -1.0 && (labels[p] == 0 || labels[p] != keep) {
                level[p] = prev;
            }
        }
    }
    let phi = |a: f64, l: f64| {
        let d = a - if l == -1.0 { 1.0 } else { l };
        1.0 - if d >= 0.15 { d } else { 0.0 }
    };
    (
        (0..w * h).map(|p| phi(pred[p], level[p])).collect(),
        (0..w * h).map(|p| phi(gt[p], level[p])).collect(),
    )
}
