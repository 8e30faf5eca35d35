//! Attention as one op: `softmax(scale · q kᵀ + bias) v` for every (batch, head) in a rayon
//! task, with gemm on slices that stay in cache. The composed form materialises the (B, H, L, L)
//! scores several times over, and its backward adds a zero-filled buffer and a sum per edge;
//! here the forward keeps the probabilities when its inputs are tracked (the backward
//! recomputes them otherwise), and the backward returns dq, dk and dv at once.

use super::norm::{softmax_grad_row, softmax_row};
use super::op::{Arg, Kernel, Op, held};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};
use zlayer_composite::with_avx2_fma;

/// `softmax(scale · q kᵀ + bias) v` for q, k, v (B, H, L, D), returned as (B, L, H·D), the
/// layout the output projection reads. `bias` broadcasts as (1 or B, 1, 1 or L, L); any other
/// shape, or any other dtype or device, is the caller's to compose.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} differ",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let bias = bias.map(|t| Bias::new(t, b, l)).transpose()?;
    let op = Attention::new(
        Dims { b, h, l, d },
        scale,
        bias,
        q.track_op() || k.track_op(),
    );
    Op(op).on(&[q, k, v])?.reshape((b, l, h * d))
}

/// [`attention`] of q, k, v stacked as (3, B, H, L, D); its gradient comes back stacked too,
/// with no narrow in the graph.
pub fn attention_stacked(qkv: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    let &[3, b, h, l, d] = qkv.dims() else {
        candle_core::bail!(
            "attention: stacked qkv must be (3, B, H, L, D), got {:?}",
            qkv.dims()
        )
    };
    let bias = bias.map(|t| Bias::new(t, b, l)).transpose()?;
    let op = Attention::new(Dims { b, h, l, d }, scale, bias, qkv.track_op());
    Op(op).on(&[qkv])?.reshape((b, l, h * d))
}

/// Whether [`attention`] takes this bias.
pub(crate) fn bias_fits(bias: &Tensor, b: usize, l: usize) -> bool {
    matches!(bias.dims(), &[bb, 1, bq, lk] if (bb == 1 || bb == b) && (bq == 1 || bq == l) && lk == l)
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    l: usize,
    d: usize,
}

/// An additive score bias, (1 or B, 1, 1 or L, L), read as rows of L keys.
#[derive(Clone)]
struct Bias {
    data: Vec<f32>,
    batches: usize,
    queries: usize,
    l: usize,
}

impl Bias {
    fn new(t: &Tensor, b: usize, l: usize) -> Result<Self> {
        if !bias_fits(t, b, l) {
            candle_core::bail!(
                "attention: bias {:?} does not broadcast to ({b}, H, {l}, {l})",
                t.dims()
            )
        }
        let dims = t.dims();
        Ok(Self {
            data: t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?,
            batches: dims[0],
            queries: dims[2],
            l,
        })
    }

    /// The bias row for query `i` of sample `bi`.
    fn row(&self, bi: usize, i: usize) -> &[f32] {
        let r = (bi % self.batches) * self.queries + i % self.queries;
        &self.data[r * self.l..(r + 1) * self.l]
    }
}

struct Attention {
    dims: Dims,
    scale: f32,
    bias: Option<Bias>,
    /// The probabilities of every head (B·H·L·L), kept by the forward pass for the backward
    /// when the inputs are tracked for gradients; otherwise the backward recomputes them.
    saved: Saved,
}

/// Where the forward pass leaves the probabilities, when asked to.
type Saved = Option<Arc<Mutex<Option<Arc<Vec<f32>>>>>>;

impl Attention {
    fn new(dims: Dims, scale: f64, bias: Option<Bias>, tracked: bool) -> Self {
        Self {
            dims,
            scale: scale as f32,
            bias,
            saved: tracked.then(Default::default),
        }
    }
}

/// A matrix view: (data, row stride, column stride).
type View<'a> = (&'a [f32], usize, usize);

/// `dst (m × n, rows of n) = beta · lhs (m × k) · rhs (k × n)`, single-threaded (the caller
/// runs one per head in parallel).
fn mm(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: View, rhs: View, beta: f32) {
    let fits = |(s, rs, cs): View, rows: usize, cols: usize| {
        rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < s.len()
    };
    assert!(
        dst.len() >= m * n && fits(lhs, m, k) && fits(rhs, k, n),
        "mm: a matrix view runs past its slice"
    );
    // SAFETY: the assert above keeps every index gemm forms inside its slice; dst is a unique
    // borrow, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl Attention {
    /// The probabilities (L × L) of head `t` = (bi, hi), q and k in (B, H, L, D).
    fn probs(&self, q: &[f32], k: &[f32], t: usize, p: &mut [f32]) {
        let Dims { h, l, d, .. } = self.dims;
        let (q, k) = (&q[t * l * d..][..l * d], &k[t * l * d..][..l * d]);
        mm(l, l, d, p, (q, d, 1), (k, 1, d), self.scale);
        with_avx2_fma(
            #[inline(always)]
            || {
                for (i, row) in p.chunks_mut(l).enumerate() {
                    if let Some(b) = &self.bias {
                        row.iter_mut()
                            .zip(b.row(t / h, i))
                            .for_each(|(s, b)| *s += b);
                    }
                    softmax_row(row, 1.0);
                }
            },
        )
    }
}

impl Attention {
    /// The output (B, L, H, D) from q, k, v (B, H, L, D).
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let Dims { b, h, l, d } = self.dims;
        let keep = self.saved.is_some();
        let mut probs = vec![0f32; if keep { b * h * l * l } else { 0 }];
        let one = |t: usize, p: &mut [f32]| {
            self.probs(q, k, t, p);
            let mut o = vec![0f32; l * d];
            mm(
                l,
                d,
                l,
                &mut o,
                (p, l, 1),
                (&v[t * l * d..][..l * d], d, 1),
                1.0,
            );
            o
        };
        let heads: Vec<Vec<f32>> = if keep {
            probs
                .par_chunks_mut(l * l)
                .enumerate()
                .map(|(t, p)| one(t, p))
                .collect()
        } else {
            (0..b * h)
                .into_par_iter()
                .map(|t| one(t, &mut vec![0f32; l * l]))
                .collect()
        };
        if let Some(saved) = &self.saved {
            *saved.lock().expect("no panics while holding it") = Some(Arc::new(probs));
        }
        // Head t's row i goes to ((bi·L + i)·H + hi)·D.
        let mut out = vec![0f32; b * h * l * d];
        for (t, o) in heads.iter().enumerate() {
            let (bi, hi) = (t / h, t % h);
            for (i, row) in o.chunks(d).enumerate() {
                out[((bi * l + i) * h + hi) * d..][..d].copy_from_slice(row);
            }
        }
        out
    }

    /// dq, dk, dv stacked as (3, B, H, L, D), from q, k, v and the output's gradient g
    /// (B, L, H, D); the probabilities are recomputed per head.
    fn backward(&self, q: &[f32], k: &[f32], v: &[f32], g: &[f32]) -> Vec<f32> {
        let Dims { b, h, l, d } = self.dims;
        let (ld, n) = (l * d, b * h * l * d);
        let saved = self.saved.as_ref().and_then(|s| s.lock().ok()?.clone());
        let mut out = vec![0f32; 3 * n];
        let (dq, rest) = out.split_at_mut(n);
        let (dk, dv) = rest.split_at_mut(n);
        dq.par_chunks_mut(ld)
            .zip(dk.par_chunks_mut(ld))
            .zip(dv.par_chunks_mut(ld))
            .enumerate()
            .for_each(|(t, ((dq, dk), dv))| {
                let (bi, hi) = (t / h, t % h);
                let p = match &saved {
                    Some(all) => std::borrow::Cow::Borrowed(&all[t * l * l..][..l * l]),
                    None => {
                        let mut p = vec![0f32; l * l];
                        self.probs(q, k, t, &mut p);
                        std::borrow::Cow::Owned(p)
                    }
                };
                // The output gradient of head t: rows of H·D, starting at its head.
                let go: View = (&g[(bi * l * h + hi) * d..], h * d, 1);
                let (qh, kh, vh) = (&q[t * ld..][..ld], &k[t * ld..][..ld], &v[t * ld..][..ld]);
                mm(l, d, l, dv, (&p, 1, l), go, 1.0); // dV = Pᵀ dO
                let mut ds = vec![0f32; l * l];
                mm(l, l, d, &mut ds, go, (vh, 1, d), 1.0); // dP = dO Vᵀ
                // dS = scale · P ⊙ (dP − Σⱼ dP ⊙ P)
                with_avx2_fma(
                    #[inline(always)]
                    || {
                        for (ds, p) in ds.chunks_mut(l).zip(p.chunks(l)) {
                            softmax_grad_row(ds, p, self.scale);
                        }
                    },
                );
                mm(l, d, l, dq, (&ds, l, 1), (kh, d, 1), 1.0); // dQ = dS K
                mm(l, d, l, dk, (&ds, 1, l), (qh, d, 1), 1.0); // dK = dSᵀ Q
            });
        out
    }

    fn out_shape(&self) -> Shape {
        let Dims { b, h, l, d } = self.dims;
        Shape::from((b, l, h, d))
    }

    fn with_grad(&self, grad: &Tensor) -> Result<AttentionBwd> {
        Ok(AttentionBwd {
            fwd: Attention {
                dims: self.dims,
                scale: self.scale,
                bias: self.bias.clone(),
                saved: self.saved.clone(),
            },
            grad: grad.contiguous()?,
        })
    }
}

/// The arguments as (q, k, v): three of (B, H, L, D), or one stacked (3, B, H, L, D).
fn split<'a>(a: &[Arg<'a>]) -> (&'a [f32], &'a [f32], &'a [f32]) {
    match a {
        [q, k, v] => (q.x, k.x, v.x),
        _ => {
            let (x, n) = (a[0].x, a[0].x.len() / 3);
            (&x[..n], &x[n..2 * n], &x[2 * n..])
        }
    }
}

impl Kernel for Attention {
    const NAME: &'static str = "zlayer-attention";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (q, k, v) = split(a);
        Ok((self.forward(q, k, v), self.out_shape()))
    }

    fn bwd(&self, a: &[&Tensor], _: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let all = Op(self.with_grad(grad)?).run(a)?; // (3, B, H, L, D)
        if a.len() == 1 {
            // Stacked in, stacked out: no narrow enters the graph.
            return Ok(vec![Some(all)]);
        }
        (0..3).map(|i| all.get(i).map(Some)).collect()
    }
}

/// The backward kernel: dq, dk, dv stacked, from the arguments with the output's gradient held.
struct AttentionBwd {
    fwd: Attention,
    grad: Tensor,
}

impl Kernel for AttentionBwd {
    const NAME: &'static str = "zlayer-attention-bwd";

    fn fwd(&self, a: &[Arg]) -> Result<(Vec<f32>, Shape)> {
        let (q, k, v) = split(a);
        let Dims { b, h, l, d } = self.fwd.dims;
        held(&self.grad, Self::NAME, |g| {
            Ok((self.fwd.backward(q, k, v, g), Shape::from((3, b, h, l, d))))
        })
    }
}
