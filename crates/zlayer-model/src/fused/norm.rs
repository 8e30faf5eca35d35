//! Row-wise kernels: softmax, layer and RMS norm, GELU-tanh and RoPE, each one pass forward
//! and one backward.

use super::op::{Arg, Kernel, Op};
use super::{GRAIN, exp, rows, tanh};
use candle_core::{Result, Shape, Tensor};

/// The output of a kernel that keeps its first argument's shape.
fn same(v: Vec<f32>, a: &Arg) -> Result<(Vec<f32>, Shape)> {
    Ok((v, Shape::from(a.dims)))
}

/// `row ← softmax(k · row)` in place; `k` must be positive.
#[inline(always)]
pub(super) fn softmax_row(row: &mut [f32], k: f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|s| *s = exp(k * (*s - m)));
    let inv = 1.0 / row.iter().sum::<f32>();
    row.iter_mut().for_each(|s| *s *= inv);
}

/// `g ← k · y ⊙ (g − Σ g ⊙ y)` in place: the gradient through [`softmax_row`] of one row
/// whose output was `y`.
#[inline(always)]
pub(super) fn softmax_grad_row(g: &mut [f32], y: &[f32], k: f32) {
    let dot: f32 = g.iter().zip(y).map(|(g, y)| g * y).sum();
    g.iter_mut()
        .zip(y)
        .for_each(|(g, &y)| *g = k * y * (*g - dot));
}

/// Rotates consecutive pairs of `row` in place by the angles whose cosines and sines are
/// `cos`, `sin` (one per pair), or by their opposites when `inverse` (the transpose).
#[inline(always)]
pub(super) fn rotate_row(row: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
    let sign = if inverse { -1.0 } else { 1.0 };
    for ((pair, &c), &s) in row.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (x0, x1, s) = (pair[0], pair[1], sign * s);
        pair[0] = x0 * c - x1 * s;
        pair[1] = x0 * s + x1 * c;
    }
}

/// (mean, 1/σ) of one row: σ² the variance about the mean when `centred`, else the mean
/// square (RMS norm, mean 0).
#[inline(always)]
pub(super) fn row_stats(x: &[f32], eps: f32, centred: bool) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = if centred {
        x.iter().sum::<f32>() / n
    } else {
        0.0
    };
    let var = x.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `softmax(scale · x)` over the last dimension; `scale` must be positive.
pub fn softmax_last(x: &Tensor, scale: f64) -> Result<Tensor> {
    Op(Softmax(scale as f32)).on(&[x])
}

struct Softmax(f32);

impl Kernel for Softmax {
    const NAME: &'static str = "zlayer-softmax";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (x, n, k) = (a[0].x, a[0].last(), self.0);
        let y = rows(x.len(), n, |y, r| {
            y.copy_from_slice(&x[r * n..(r + 1) * n]);
            softmax_row(y, k);
        });
        same(y, &a[0])
    }

    fn bwd(&self, _: &[&Tensor], res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(Op(SoftmaxBwd(self.0)).run(&[res, grad])?)])
    }
}

/// `dx = scale · y ⊙ (g − Σ g ⊙ y)` from (y, g).
struct SoftmaxBwd(f32);

impl Kernel for SoftmaxBwd {
    const NAME: &'static str = "zlayer-softmax-bwd";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (y, g, n) = (a[0].x, a[1].x, a[0].last());
        let dx = rows(y.len(), n, |dx, r| {
            dx.copy_from_slice(&g[r * n..(r + 1) * n]);
            softmax_grad_row(dx, &y[r * n..(r + 1) * n], self.0);
        });
        same(dx, &a[0])
    }
}

/// Which row normalisation.
#[derive(Clone, Copy)]
enum Norm {
    /// `(x − mean) / √(var + eps)`.
    Layer,
    /// `x / √(mean(x²) + eps)`.
    Rms,
}

/// Parameter-free layer normalisation over the last dimension.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    Op(RowNorm(Norm::Layer, eps as f32, false)).on(&[x])
}

/// RMS normalisation over the last dimension, without the learned scale.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    Op(RowNorm(Norm::Rms, eps as f32, false)).on(&[x])
}

/// A row norm with eps; with `true`, its backward kernel: `dx` from (x, g).
#[derive(Clone, Copy)]
struct RowNorm(Norm, f32, bool);

impl RowNorm {
    /// (mean subtracted, 1/σ) of one row.
    fn stats(&self, x: &[f32]) -> (f32, f32) {
        row_stats(x, self.1, matches!(self.0, Norm::Layer))
    }
}

impl Kernel for RowNorm {
    const NAME: &'static str = "zlayer-row-norm";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (x, n) = (a[0].x, a[0].last());
        if !self.2 {
            let y = rows(x.len(), n, |y, r| {
                let x = &x[r * n..(r + 1) * n];
                let (mean, rstd) = self.stats(x);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = (x - mean) * rstd;
                }
            });
            return same(y, &a[0]);
        }
        // dx = (g − mean(g) − y · mean(g ⊙ y)) / σ; the RMS norm drops mean(g).
        let g = a[1].x;
        let dx = rows(x.len(), n, |dx, r| {
            let (x, g) = (&x[r * n..(r + 1) * n], &g[r * n..(r + 1) * n]);
            let (mean, rstd) = self.stats(x);
            let nf = n as f32;
            let mg = match self.0 {
                Norm::Layer => g.iter().sum::<f32>() / nf,
                Norm::Rms => 0.0,
            };
            let mgy = x
                .iter()
                .zip(g)
                .map(|(x, g)| (x - mean) * rstd * g)
                .sum::<f32>()
                / nf;
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                *dx = rstd * (g - mg - (x - mean) * rstd * mgy);
            }
        });
        same(dx, &a[0])
    }

    fn bwd(&self, a: &[&Tensor], _: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(
            Op(RowNorm(self.0, self.1, true)).run(&[a[0], grad])?,
        )])
    }
}

/// √(2/π), GELU-tanh's inner factor.
const GELU_K: f32 = 0.797_884_6;
/// GELU-tanh's cubic coefficient.
const GELU_C: f32 = 0.044_715;

/// GELU with the tanh approximation (candle's `gelu`, FLUX's `approximate="tanh"`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    Op(Gelu(false)).on(&[x])
}

/// GELU-tanh; with `true`, its backward kernel: `dx = g · gelu'(x)` from (x, g).
struct Gelu(bool);

impl Kernel for Gelu {
    const NAME: &'static str = "zlayer-gelu";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let x = a[0].x;
        let out = if !self.0 {
            rows(x.len(), GRAIN, |y, r| {
                for (y, &x) in y.iter_mut().zip(&x[r * GRAIN..]) {
                    *y = 0.5 * x * (1.0 + tanh(GELU_K * (x + GELU_C * x * x * x)));
                }
            })
        } else {
            let g = a[1].x;
            rows(x.len(), GRAIN, |dx, r| {
                let (x, g) = (&x[r * GRAIN..], &g[r * GRAIN..]);
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    let t = tanh(GELU_K * (x + GELU_C * x * x * x));
                    let du = GELU_K * (1.0 + 3.0 * GELU_C * x * x);
                    *dx = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
                }
            })
        };
        same(out, &a[0])
    }

    fn bwd(&self, a: &[&Tensor], _: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(Op(Gelu(true)).run(&[a[0], grad])?)])
    }
}

/// Rotates consecutive pairs of the last dimension of `x` (B, H, L, D) by the angles whose
/// cosines and sines are `cos`, `sin` (B or 1, 1, L, D/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Op(Rope(false)).on(&[x, cos, sin])
}

/// RoPE; with `true`, the rotation by the opposite angles (its backward).
struct Rope(bool);

impl Kernel for Rope {
    const NAME: &'static str = "zlayer-rope";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (x, cos, sin) = (a[0].x, a[1].x, a[2].x);
        let &[b, h, l, d] = a[0].dims else {
            candle_core::bail!(
                "{}: x must be (B, H, L, D), got {:?}",
                Self::NAME,
                a[0].dims
            )
        };
        let cb = a[1].dims[0];
        if a[1].dims != [cb, 1, l, d / 2] || a[2].dims != a[1].dims || !(cb == b || cb == 1) {
            candle_core::bail!(
                "{}: angles {:?}/{:?} do not fit x {:?}",
                Self::NAME,
                a[1].dims,
                a[2].dims,
                a[0].dims
            )
        }
        // One row per (b, h, l); the angles depend on (b, l).
        let y = rows(x.len(), d, |y, r| {
            let (bi, li) = (r / (h * l), r % l);
            let at = ((bi % cb) * l + li) * (d / 2);
            y.copy_from_slice(&x[r * d..(r + 1) * d]);
            rotate_row(y, &cos[at..at + d / 2], &sin[at..at + d / 2], self.0);
        });
        same(y, &a[0])
    }

    fn bwd(&self, a: &[&Tensor], _: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // A rotation's transpose is the rotation by the opposite angle.
        Ok(vec![Some(Op(Rope(!self.0)).run(&[grad, a[1], a[2]])?)])
    }
}
