//! From a fused q/k/v projection to attention-ready heads in one op: split into heads,
//! RMS-normalise q and k with their learned scales, rotate them by RoPE, and stack as
//! (3, B, H, L, D) for [`super::attention_stacked`].
//!
//! Composed, this is a reshape, a permute, three narrows (whose backward pads each gradient
//! with zeros to the full q/k/v size), two norms, two scale products, two rotations and three
//! copies. The backward here writes the projection's gradient and both scale gradients in one
//! pass over rows.

use super::norm::{rotate_row, row_stats};
use super::op::{Arg, Kernel, Op, held};
use super::rows;
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;
use zlayer_composite::with_avx2_fma;

/// q, k, v heads (3, B, H, L, D) from `x` (B, L, 3·H·D): q and k RMS-normalised (eps), times
/// `q_scale`/`k_scale` (D), rotated by the angles `cos`/`sin` (B or 1, 1, L, D/2).
pub fn qkv_heads(
    x: &Tensor,
    q_scale: &Tensor,
    k_scale: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    heads: usize,
    eps: f64,
) -> Result<Tensor> {
    let (b, l, three_hd) = x.dims3()?;
    let d = three_hd / 3 / heads;
    let cb = cos.dim(0)?;
    let fits = 3 * heads * d == three_hd
        && q_scale.dims() == [d]
        && k_scale.dims() == [d]
        && cos.dims() == [cb, 1, l, d / 2]
        && sin.dims() == cos.dims()
        && (cb == 1 || cb == b)
        && d.is_multiple_of(2);
    if !fits {
        candle_core::bail!(
            "qkv_heads: x {:?}, scales {:?}/{:?}, angles {:?} do not fit {heads} heads",
            x.dims(),
            q_scale.dims(),
            k_scale.dims(),
            cos.dims()
        )
    }
    let op = Heads {
        dims: (b, l, heads, d),
        eps: eps as f32,
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        grad: None,
    };
    Op(op).on(&[x, q_scale, k_scale])
}

struct Heads {
    /// (B, L, H, D).
    dims: (usize, usize, usize, usize),
    eps: f32,
    cos: Tensor,
    sin: Tensor,
    /// The output's gradient (3, B, H, L, D), for the backward kernel.
    grad: Option<Tensor>,
}

impl Heads {
    /// Source row of (part, b, h, l) in x, and the offset of its angles.
    fn src(&self, part: usize, bi: usize, hi: usize, li: usize, cb: usize) -> (usize, usize) {
        let (_, l, h, d) = self.dims;
        (
            (bi * l + li) * 3 * h * d + part * h * d + hi * d,
            ((bi % cb) * l + li) * (d / 2),
        )
    }

    /// (1/rms, the normalised row) of one q or k head row.
    fn norm(&self, x: &[f32], n: &mut [f32]) -> f32 {
        let (_, rstd) = row_stats(x, self.eps, false);
        n.iter_mut().zip(x).for_each(|(n, x)| *n = x * rstd);
        rstd
    }
}

impl Kernel for Heads {
    const NAME: &'static str = "zlayer-qkv-heads";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let name = Self::NAME;
        let (x, scales) = (a[0].x, [a[1].x, a[2].x]);
        let cb = self.cos.dim(0)?;
        held(&self.cos, name, |cos| {
            held(&self.sin, name, |sin| match &self.grad {
                None => Ok(self.forward(x, scales, [cos, sin], cb)),
                Some(g) => held(g, name, |g| Ok(self.backward(x, scales, [cos, sin], g, cb))),
            })
        })
    }

    fn bwd(&self, a: &[&Tensor], _: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let op = Heads {
            dims: self.dims,
            eps: self.eps,
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            grad: Some(grad.contiguous()?),
        };
        let all = Op(op).run(a)?; // [dx | dq_scale | dk_scale]
        let (n, d) = (a[0].elem_count(), self.dims.3);
        Ok(vec![
            Some(all.narrow(0, 0, n)?.reshape(a[0].shape())?),
            Some(all.narrow(0, n, d)?),
            Some(all.narrow(0, n + d, d)?),
        ])
    }
}

impl Heads {
    fn forward(
        &self,
        x: &[f32],
        scale: [&[f32]; 2],
        [cos, sin]: [&[f32]; 2],
        cb: usize,
    ) -> (Vec<f32>, Shape) {
        let (b, l, h, d) = self.dims;
        let out = rows(3 * b * h * l * d, d, |y, r| {
            let (li, hi, bi, part) = (r % l, (r / l) % h, (r / (l * h)) % b, r / (l * h * b));
            let (s, a) = self.src(part, bi, hi, li, cb);
            let x = &x[s..s + d];
            if part == 2 {
                y.copy_from_slice(x);
                return;
            }
            self.norm(x, y);
            y.iter_mut().zip(scale[part]).for_each(|(y, s)| *y *= s);
            rotate_row(y, &cos[a..a + d / 2], &sin[a..a + d / 2], false);
        });
        (out, Shape::from((3, b, h, l, d)))
    }

    /// [dx (B, L, 3·H·D) | d q_scale (D) | d k_scale (D)] from the output gradient g.
    fn backward(
        &self,
        x: &[f32],
        scale: [&[f32]; 2],
        [cos, sin]: [&[f32]; 2],
        g: &[f32],
        cb: usize,
    ) -> (Vec<f32>, Shape) {
        let (b, l, h, d) = self.dims;
        let width = 3 * h * d;
        let mut dx = vec![0f32; b * l * width];
        let per = (super::GRAIN / width).max(1);
        let scales = dx
            .par_chunks_mut(per * width)
            .enumerate()
            .map(|(t, chunk)| {
                with_avx2_fma(
                    #[inline(always)]
                    || {
                        let mut acc = vec![0f32; 2 * d];
                        let (mut n, mut gm) = (vec![0f32; d], vec![0f32; d]);
                        for (j, row) in chunk.chunks_mut(width).enumerate() {
                            let r = t * per + j; // = bi·L + li
                            let (bi, li) = (r / l, r % l);
                            for part in 0..3 {
                                for hi in 0..h {
                                    let (s, a) = self.src(part, bi, hi, li, cb);
                                    let go = &g[(((part * b + bi) * h + hi) * l + li) * d..][..d];
                                    let dxr = &mut row[part * h * d + hi * d..][..d];
                                    if part == 2 {
                                        dxr.copy_from_slice(go);
                                        continue;
                                    }
                                    // Undo the rotation: the gradient of the scaled, normalised row.
                                    gm.copy_from_slice(go);
                                    rotate_row(
                                        &mut gm,
                                        &cos[a..a + d / 2],
                                        &sin[a..a + d / 2],
                                        true,
                                    );
                                    let rstd = self.norm(&x[s..s + d], &mut n);
                                    let sc = scale[part];
                                    let acc = &mut acc[part * d..(part + 1) * d];
                                    let mut dot = 0f32;
                                    for i in 0..d {
                                        acc[i] += gm[i] * n[i];
                                        gm[i] *= sc[i]; // now the gradient of n
                                        dot += gm[i] * n[i];
                                    }
                                    let dot = dot / d as f32;
                                    for i in 0..d {
                                        dxr[i] = rstd * (gm[i] - n[i] * dot);
                                    }
                                }
                            }
                        }
                        acc
                    },
                )
            })
            .reduce(
                || vec![0f32; 2 * d],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        dx.extend(scales);
        let len = dx.len();
        (dx, Shape::from(len))
    }
}
