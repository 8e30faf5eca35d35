//! Whole-image fidelity: PSNR and SSIM of RGB images in [0, 1] (DESIGN.md §5's latent
//! compositing measures).
//!
//! SSIM is Wang et al.'s: local means, variances and covariance under an 11×11 Gaussian
//! window of σ 1.5 (edges clamped), C₁ = (0.01)², C₂ = (0.03)², computed per channel and
//! averaged over pixels and channels.

/// PSNR in dB of `a` against `b` (equal lengths, values in [0, 1]); infinite when equal.
pub fn psnr(a: &[[f32; 3]], b: &[[f32; 3]]) -> f64 {
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(p, q)| {
            (0..3)
                .map(|c| (p[c] as f64 - q[c] as f64).powi(2))
                .sum::<f64>()
        })
        .sum();
    let mse = se / (3 * a.len().max(1)) as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (1.0 / mse).log10()
}

const RADIUS: i64 = 5;
const SIGMA: f64 = 1.5;

fn window() -> Vec<f64> {
    let k: Vec<f64> = (-RADIUS..=RADIUS)
        .map(|d| (-(d * d) as f64 / (2.0 * SIGMA * SIGMA)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// The Gaussian-window mean of a `w × h` plane, separably, edges clamped.
fn smooth(p: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let at = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    let rows: Vec<f64> = (0..w * h)
        .map(|i| {
            let (x, y) = ((i % w) as i64, i / w);
            (-RADIUS..=RADIUS)
                .zip(k)
                .map(|(d, kv)| kv * p[y * w + at(x + d, w)])
                .sum()
        })
        .collect();
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, (i / w) as i64);
            (-RADIUS..=RADIUS)
                .zip(k)
                .map(|(d, kv)| kv * rows[at(y + d, h) * w + x])
                .sum()
        })
        .collect()
}

/// Mean SSIM of two `w × h` RGB images in [0, 1].
pub fn ssim(a: &[[f32; 3]], b: &[[f32; 3]], w: usize, h: usize) -> f64 {
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let k = window();
    let mut total = 0.0;
    for c in 0..3 {
        let x: Vec<f64> = a.iter().map(|p| p[c] as f64).collect();
        let y: Vec<f64> = b.iter().map(|p| p[c] as f64).collect();
        let prod = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(p, q)| p * q).collect::<Vec<_>>();
        let (mx, my) = (smooth(&x, w, h, &k), smooth(&y, w, h, &k));
        let (sxx, syy, sxy) = (
            smooth(&prod(&x, &x), w, h, &k),
            smooth(&prod(&y, &y), w, h, &k),
            smooth(&prod(&x, &y), w, h, &k),
        );
        for i in 0..w * h {
            let (vx, vy, cxy) = (
                sxx[i] - mx[i] * mx[i],
                syy[i] - my[i] * my[i],
                sxy[i] - mx[i] * my[i],
            );
            total += ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2))
                / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
        }
    }
    total / (3 * w * h) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: usize, h: usize, seed: u64) -> Vec<[f32; 3]> {
        let mut r = zlayer_scene::rng::Rng::new(seed);
        (0..w * h).map(|_| [r.f32(), r.f32(), r.f32()]).collect()
    }

    /// SSIM at one pixel by the definition: explicit 2D window sums.
    fn naive(a: &[[f32; 3]], b: &[[f32; 3]], w: usize, h: usize) -> f64 {
        let k = window();
        let mut total = 0.0;
        for c in 0..3 {
            for i in 0..w * h {
                let (x0, y0) = ((i % w) as i64, (i / w) as i64);
                let (mut mx, mut my, mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for dy in -RADIUS..=RADIUS {
                    for dx in -RADIUS..=RADIUS {
                        let wgt = k[(dx + RADIUS) as usize] * k[(dy + RADIUS) as usize];
                        let x = (x0 + dx).clamp(0, w as i64 - 1) as usize;
                        let y = (y0 + dy).clamp(0, h as i64 - 1) as usize;
                        let (p, q) = (a[y * w + x][c] as f64, b[y * w + x][c] as f64);
                        mx += wgt * p;
                        my += wgt * q;
                        xx += wgt * p * p;
                        yy += wgt * q * q;
                        xy += wgt * p * q;
                    }
                }
                let (c1, c2) = (1e-4, 9e-4);
                total += ((2.0 * mx * my + c1) * (2.0 * (xy - mx * my) + c2))
                    / ((mx * mx + my * my + c1) * (xx - mx * mx + yy - my * my + c2));
            }
        }
        total / (3 * w * h) as f64
    }

    #[test]
    fn ssim_matches_the_definition_and_orders_degradations() {
        let (w, h) = (13, 9);
        let a = image(w, h, 1);
        assert!((ssim(&a, &a, w, h) - 1.0).abs() < 1e-12);
        for seed in 2..6 {
            let b = image(w, h, seed);
            let (fast, slow) = (ssim(&a, &b, w, h), naive(&a, &b, w, h));
            assert!((fast - slow).abs() < 1e-9, "{fast} {slow}");
        }
        let noisy = |s: f32| -> Vec<[f32; 3]> {
            let n = image(w, h, 9);
            a.iter()
                .zip(&n)
                .map(|(p, q)| [0, 1, 2].map(|c| (p[c] + s * (q[c] - 0.5)).clamp(0.0, 1.0)))
                .collect()
        };
        let (slight, heavy) = (noisy(0.05), noisy(0.5));
        assert!(ssim(&a, &slight, w, h) > ssim(&a, &heavy, w, h));
        assert!(psnr(&a, &slight) > psnr(&a, &heavy));
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        // PSNR by hand: every channel off by 0.1 → MSE 0.01 → 20 dB.
        let off: Vec<[f32; 3]> = a.iter().map(|p| p.map(|c| c + 0.1)).collect();
        assert!((psnr(&a, &off) - 20.0).abs() < 1e-4);
    }
}
