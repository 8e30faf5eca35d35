//! Per-sample vectors applied over rows: bias, adaLN modulation and the gated residual, with
//! backward passes whose vector gradients are single column sums.

use super::op::{Arg, Kernel, Op};
use super::{GRAIN, rows};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// The number of groups of rows of `x` for a per-group vector `v` of (G, 1, D), (1, D) or (D):
/// x is (G, L, D) for G > 1, any (…, D) for one group. `None` when they do not fit.
fn groups(x: &Tensor, v: &Tensor) -> Option<usize> {
    let d = *x.dims().last()?;
    match v.dims() {
        [d2] if *d2 == d => Some(1),
        [1, d2] | [1, 1, d2] if *d2 == d => Some(1),
        [g, 1, d2] if *d2 == d && x.rank() == 3 && x.dim(0).ok()? == *g => Some(*g),
        _ => None,
    }
}

/// `x + b` for a bias `b` (D) over the rows of `x` (…, D); the bias gradient is a column
/// sum in one pass where candle's broadcast backward reduces a strided view.
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    Op(Rows::Bias).on(&[x, b])
}

/// `x · (1 + scale) + shift` with scale and shift (B, 1, D) over x (B, L, D), or (D) over
/// any x. Falls back to broadcast ops when the shapes do not fit that pattern.
pub fn modulate(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    if groups(x, scale).is_none() || scale.dims() != shift.dims() {
        return x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift);
    }
    Op(Rows::Modulate).on(&[x, scale, shift])
}

/// `r + gate · y`, a gated residual, with gate (B, 1, D) over r and y (B, L, D). Falls back
/// to broadcast ops when the shapes do not fit.
pub fn gate_add(r: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    if groups(y, gate).is_none() || r.dims() != y.dims() {
        return r + gate.broadcast_mul(y)?;
    }
    Op(Rows::GateAdd).on(&[r, gate, y])
}

/// Per-group vectors over rows. The first argument's rows fall into as many equal groups as
/// the vector (second argument) has rows of D.
#[derive(Clone, Copy)]
enum Rows {
    /// (x, v) → `x + v[g]`.
    Bias,
    /// (x, v) → `x · (1 + v[g])`; backward kernel.
    ScalePlusOne,
    /// (x, v) → `x · v[g]`; backward kernel.
    Scale,
    /// (x, scale, shift) → `x · (1 + scale[g]) + shift[g]`.
    Modulate,
    /// (r, gate, y) → `r + gate[g] · y`.
    GateAdd,
}

impl Kernel for Rows {
    const NAME: &'static str = "zlayer-rows";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (x, v, d) = (a[0].x, a[1].x, a[0].last());
        let per_group = x.len() / v.len();
        let op = *self;
        let y = rows(x.len(), d, |y, r| {
            let g = r / per_group;
            let v = &v[g * d..(g + 1) * d];
            let x = &x[r * d..(r + 1) * d];
            let items = y.iter_mut().zip(x).zip(v);
            match op {
                Rows::Bias => items.for_each(|((y, x), v)| *y = x + v),
                Rows::ScalePlusOne => items.for_each(|((y, x), v)| *y = x * (1.0 + v)),
                Rows::Scale => items.for_each(|((y, x), v)| *y = x * v),
                Rows::Modulate => {
                    let sh = &a[2].x[g * d..(g + 1) * d];
                    items
                        .zip(sh)
                        .for_each(|(((y, x), s), sh)| *y = x * (1.0 + s) + sh)
                }
                Rows::GateAdd => {
                    let u = &a[2].x[r * d..(r + 1) * d];
                    items.zip(u).for_each(|(((y, r), g), u)| *y = r + g * u)
                }
            }
        });
        Ok((y, Shape::from(a[0].dims)))
    }

    fn bwd(&self, a: &[&Tensor], _: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = grad.contiguous()?;
        Ok(match self {
            Rows::Bias => vec![Some(g.clone()), Some(column_sums(&g, None, a[1])?)],
            Rows::Modulate => vec![
                Some(Op(Rows::ScalePlusOne).run(&[&g, a[1]])?),
                Some(column_sums(&g, Some(a[0]), a[1])?),
                Some(column_sums(&g, None, a[2])?),
            ],
            Rows::GateAdd => vec![
                Some(g.clone()),
                Some(column_sums(&g, Some(a[2]), a[1])?),
                Some(Op(Rows::Scale).run(&[&g, a[1]])?),
            ],
            Rows::ScalePlusOne | Rows::Scale => {
                candle_core::bail!("{}: a backward kernel has no backward", Self::NAME)
            }
        })
    }
}

/// Σ over each group's rows of `g` (or `g ⊙ x`), shaped like the group vector `like`.
fn column_sums(g: &Tensor, x: Option<&Tensor>, like: &Tensor) -> Result<Tensor> {
    let n = groups(g, like)
        .ok_or_else(|| candle_core::Error::Msg("zlayer-column-sums: shapes do not fit".into()))?;
    let out = match x {
        None => Op(ColumnSums(n)).run(&[g])?,
        Some(x) => Op(ColumnSums(n)).run(&[g, x])?,
    };
    out.reshape(like.shape())
}

/// Column sums per group: (G·L, D) → (G, D), of one argument or of the product of two.
struct ColumnSums(usize);

impl Kernel for ColumnSums {
    const NAME: &'static str = "zlayer-column-sums";

    fn fwd(&self, args: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (a, d, g) = (args[0].x, args[0].last(), self.0);
        let b = args.get(1).map(|b| b.x);
        let rows_per = a.len() / d / g;
        // Tasks of whole rows: a group each when there are several, else slices of rows.
        let tasks = if g > 1 {
            g
        } else {
            (a.len() / GRAIN).clamp(1, 64)
        };
        let rows_per_task = if g > 1 {
            rows_per
        } else {
            rows_per.div_ceil(tasks)
        };
        let partial: Vec<(usize, Vec<f32>)> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let (r0, r1) = (
                    t * rows_per_task,
                    ((t + 1) * rows_per_task).min(a.len() / d),
                );
                let mut acc = vec![0f32; d];
                for r in r0..r1 {
                    let ar = &a[r * d..(r + 1) * d];
                    match b {
                        None => acc.iter_mut().zip(ar).for_each(|(s, a)| *s += a),
                        Some(b) => {
                            let br = &b[r * d..(r + 1) * d];
                            acc.iter_mut()
                                .zip(ar.iter().zip(br))
                                .for_each(|(s, (a, b))| *s += a * b)
                        }
                    }
                }
                (if g > 1 { t } else { 0 }, acc)
            })
            .collect();
        let mut out = vec![0f32; g * d];
        for (gi, acc) in partial {
            out[gi * d..(gi + 1) * d]
                .iter_mut()
                .zip(acc)
                .for_each(|(o, a)| *o += a);
        }
        Ok((out, Shape::from((g, d))))
    }
}
