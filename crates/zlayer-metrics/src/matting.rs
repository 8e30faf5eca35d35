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
    Matting {
        sad: sad(pred, gt, region),
        mse: mse(pred, gt, region),
        grad: grad(pred, gt, w, h, region),
        conn: conn(pred, gt, w, h, region),
    }
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

/// The 9×9 Gaussian-derivative kernel hx(i, j) = G(u_i)·G′(u_j), σ = 1.4, unit Frobenius norm.
/// Its half size, ceil(σ·sqrt(−2 ln(√(2π)·σ·0.01))) = 4, is the DIM reference's.
fn gauss_kernel(sigma: f64) -> (usize, Vec<f64>) {
    let half = (sigma * (-2.0 * ((2.0 * std::f64::consts::PI).sqrt() * sigma * 1e-2).ln()).sqrt())
        .ceil() as usize;
    let n = 2 * half + 1;
    let g = |x: f64| {
        (-x * x / (2.0 * sigma * sigma)).exp() / (sigma * (2.0 * std::f64::consts::PI).sqrt())
    };
    let dg = |x: f64| -x * g(x) / (sigma * sigma);
    let mut k: Vec<f64> = (0..n * n)
        .map(|idx| g((idx / n) as f64 - half as f64) * dg((idx % n) as f64 - half as f64))
        .collect();
    let norm = k.iter().map(|v| v * v).sum::<f64>().sqrt();
    k.iter_mut().for_each(|v| *v /= norm);
    (half, k)
}

/// Gradient magnitude by correlating with hx and hy = hxᵀ, replicate border.
fn gauss_gradient(img: &[f64], w: usize, h: usize, half: usize, k: &[f64]) -> Vec<f64> {
    let n = 2 * half + 1;
    let clamp = |v: isize, hi: usize| v.clamp(0, hi as isize - 1) as usize;
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let (mut gx, mut gy) = (0.0, 0.0);
            for i in 0..n {
                let yy = clamp(y as isize + i as isize - half as isize, h);
                for j in 0..n {
                    let v = img[yy * w + clamp(x as isize + j as isize - half as isize, w)];
                    gx += k[i * n + j] * v;
                    gy += k[j * n + i] * v;
                }
            }
            out[y * w + x] = (gx * gx + gy * gy).sqrt();
        }
    }
    out
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
    let (half, k) = gauss_kernel(1.4);
    let gp = gauss_gradient(&min_max(pred), w, h, half, &k);
    let gg = gauss_gradient(&min_max(gt), w, h, half, &k);
    (0..w * h)
        .filter(|&p| region.contains(p))
        .map(|p| (gp[p] - gg[p]).powi(2))
        .sum::<f64>()
        / 1000.0
}

/// Conn: at thresholds t = 0.1, 0.2, …, 1, the largest 4-connected component of
/// (p ≥ t ∧ g ≥ t); a pixel's level l is the threshold just before the first at which it
/// leaves that component (1 if it never does). φ = 1 − d·[d ≥ 0.15] with d = α − l.
/// Conn = Σ_U |φ_p − φ_g| / 1000.
pub fn conn(pred: &[f64], gt: &[f64], w: usize, h: usize, region: Region) -> f64 {
    let mut level = vec![-1.0f64; w * h];
    for i in 1..=10 {
        // i·0.1 in f64, exactly the values numpy.arange(0, 1.1, 0.1) produces.
        let (t, prev) = (i as f64 * 0.1, (i - 1) as f64 * 0.1);
        let both: Vec<bool> = (0..w * h).map(|p| pred[p] >= t && gt[p] >= t).collect();
        let (labels, sizes) = crate::grid::components4(&both, w, h);
        // The first of the largest components, as numpy's argmax picks it.
        let largest = sizes.iter().enumerate().fold(
            None,
            |best: Option<(usize, usize)>, (k, &s)| match best {
                Some((_, bs)) if bs >= s => best,
                _ => Some((k, s)),
            },
        );
        let keep = largest.map(|(k, _)| k as u32 + 1);
        for p in 0..w * h {
            if level[p] == -1.0 && Some(labels[p]) != keep.filter(|_| labels[p] != 0) {
                level[p] = prev;
            }
        }
    }
    let phi = |a: f64, l: f64| {
        let d = a - if l == -1.0 { 1.0 } else { l };
        1.0 - if d >= 0.15 { d } else { 0.0 }
    };
    (0..w * h)
        .filter(|&p| region.contains(p))
        .map(|p| (phi(pred[p], level[p]) - phi(gt[p], level[p])).abs())
        .sum::<f64>()
        / 1000.0
}
