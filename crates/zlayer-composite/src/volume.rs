//! Volume-rendering composition of instance layers (OcclusionFormer, DESIGN.md §4.1).
//!
//! K instance layers Ẑ_i ∈ R^{L×D} (zero outside their box), per-channel densities
//! σ_i ∈ R^D and soft box masks b_i ∈ [0,1]^L combine as
//!
//! - α_i = 1 − exp(−σ_i)
//! - T_i(p) = exp(−Σ_{j∈O_i} σ_j · b_j(p))
//! - w_i(p) = T_i(p) · α_i · b_i(p)
//! - Z(p) = Σ_i w_i(p) Ẑ_i(p) / Σ_i w_i(p), and 0 where Σ_i w_i(p) = 0.
//!
//! Overlaps without a declared order are therefore α-weighted averages.
//!
//! Why it is fast: T_i is a product of per-occluder factors exp(−σ_j b_j(p)). Soft box masks
//! are 0 or 1 almost everywhere, and for b_j = 1 the factor exp(−σ_j) is computed once per
//! layer, so the inner loops are multiply-adds over contiguous channels, and `exp` runs only
//! on box edges. Layers whose mask is 0 at a token are never read there.
//! A plain reference of the formulas lives in the tests; the candle op in zlayer-model is
//! checked against this one.

/// Shapes did not agree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("volume composition: {what} has {found} values, expected {expected} ({detail})")]
pub struct ShapeError {
    what: &'static str,
    found: usize,
    expected: usize,
    detail: String,
}

/// The inputs of one composition, with checked shapes.
#[derive(Debug, Clone, Copy)]
pub struct VolumeInputs<'a> {
    k: usize,
    l: usize,
    d: usize,
    layers: &'a [f32],
    sigma: &'a [f32],
    masks: &'a [f32],
    occluders: &'a [Vec<usize>],
}

impl<'a> VolumeInputs<'a> {
    /// Checks shapes: `layers` (K, L, D), `sigma` (K, D), `masks` (K, L) in [0, 1],
    /// `occluders` K sets of indices `< K` (the O_i of the occlusion graph).
    pub fn new(
        l: usize,
        d: usize,
        layers: &'a [f32],
        sigma: &'a [f32],
        masks: &'a [f32],
        occluders: &'a [Vec<usize>],
    ) -> Result<Self, ShapeError> {
        let k = occluders.len();
        let detail = format!("K={k} layers, L={l} tokens, D={d} channels");
        let check = |what, found: usize, expected: usize| {
            if found == expected {
                Ok(())
            } else {
                Err(ShapeError {
                    what,
                    found,
                    expected,
                    detail: detail.clone(),
                })
            }
        };
        check("layers", layers.len(), k * l * d)?;
        check("sigma", sigma.len(), k * d)?;
        check("masks", masks.len(), k * l)?;
        if let Some(bad) = occluders.iter().flatten().find(|&&j| j >= k) {
            check("an occluder index", *bad, k - 1)?;
        }
        Ok(Self {
            k,
            l,
            d,
            layers,
            sigma,
            masks,
            occluders,
        })
    }

    /// Number of tokens L.
    pub fn tokens(&self) -> usize {
        self.l
    }

    /// Number of channels D.
    pub fn channels(&self) -> usize {
        self.d
    }
}

/// Channels handled together: long enough to amortise the per-layer bookkeeping, short
/// enough that the weight and accumulators stay in L1.
const CHUNK: usize = 256;

/// Per-layer constants α_i and exp(−σ_i), (K, D).
struct Constants {
    alpha: Vec<f32>,
    transmit: Vec<f32>,
}

impl Constants {
    fn new(x: &VolumeInputs) -> Self {
        Self {
            transmit: x.sigma.iter().map(|&s| (-s).exp()).collect(),
            // −expm1(−σ), not 1 − exp(−σ): the latter cancels catastrophically for small σ.
            alpha: x.sigma.iter().map(|&s| -(-s).exp_m1()).collect(),
        }
    }
}

/// The plan for one token: which layers cover it, and which occluder factor each multiplies
/// by: exp(−σ_j) where b_j = 1, or exp(−σ_j b_j) (computed here) on box edges.
struct Token {
    /// (layer i, b_i(p), range of `factors`).
    active: Vec<(usize, f32, std::ops::Range<usize>)>,
    /// (occluder j, whether b_j is fractional).
    factors: Vec<(usize, bool)>,
    edge: Vec<f32>,
}

impl Token {
    fn new(x: &VolumeInputs) -> Self {
        Self {
            active: Vec::with_capacity(x.k),
            factors: Vec::new(),
            edge: vec![0.0; x.k * x.d],
        }
    }

    /// Plans token `p`; returns false when no layer covers it.
    fn load(&mut self, x: &VolumeInputs, p: usize) -> bool {
        let b = |j: usize| x.masks[j * x.l + p];
        self.active.clear();
        self.factors.clear();
        for j in 0..x.k {
            let bj = b(j);
            if bj > 0.0 && bj < 1.0 {
                let sig = &x.sigma[j * x.d..(j + 1) * x.d];
                for (f, &sg) in self.edge[j * x.d..(j + 1) * x.d].iter_mut().zip(sig) {
                    *f = (-sg * bj).exp();
                }
            }
        }
        for i in 0..x.k {
            let bi = b(i);
            if bi <= 0.0 {
                continue;
            }
            let start = self.factors.len();
            for &j in &x.occluders[i] {
                let bj = b(j);
                if bj > 0.0 {
                    self.factors.push((j, bj < 1.0));
                }
            }
            self.active.push((i, bi, start..self.factors.len()));
        }
        !self.active.is_empty()
    }

    /// Hands w_i(p) on channels `c0 .. c0 + n` for the active entry `a` to `sink(k, w)`.
    ///
    /// Occluder factors are multiplied in up to four per pass (the first pass also applies
    /// α_i b_i, the last feeds `sink`), so a layer behind seven others costs two passes over
    /// the channels, not nine. `w` is scratch of at least `n` values.
    #[inline(always)]
    fn weight(
        &self,
        x: &VolumeInputs,
        c: &Constants,
        a: usize,
        c0: usize,
        w: &mut [f32],
        sink: &mut impl FnMut(usize, f32),
    ) {
        let (i, bi, ref fs) = self.active[a];
        let n = w.len();
        let alpha = &c.alpha[i * x.d + c0..][..n];
        let factor = |&(j, edge): &(usize, bool)| {
            let src = if edge { &self.edge } else { &c.transmit };
            &src[j * x.d + c0..][..n]
        };
        let mut it = self.factors[fs.clone()].iter().map(factor);
        let m = fs.len();
        if m <= 3 {
            let f: [&[f32]; 3] = [
                it.next().unwrap_or(alpha),
                it.next().unwrap_or(alpha),
                it.next().unwrap_or(alpha),
            ];
            match m {
                0 => pass::<0>(n, [], |k| alpha[k] * bi, sink),
                1 => pass::<1>(n, [f[0]], |k| alpha[k] * bi, sink),
                2 => pass::<2>(n, [f[0], f[1]], |k| alpha[k] * bi, sink),
                _ => pass::<3>(n, f, |k| alpha[k] * bi, sink),
            }
            return;
        }
        let first = [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()];
        pass::<3>(n, first, |k| alpha[k] * bi, &mut |k, v| w[k] = v);
        let mut left = m - 3;
        while left > 4 {
            let f = [
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
                it.next().unwrap(),
            ];
            let (f0, f1, f2, f3) = (&f[0][..n], &f[1][..n], &f[2][..n], &f[3][..n]);
            let w = &mut w[..n];
            for k in 0..n {
                w[k] *= f0[k] * f1[k] * f2[k] * f3[k];
            }
            left -= 4;
        }
        let w = &w[..n];
        let f = [
            it.next().unwrap(),
            it.next().unwrap_or(w),
            it.next().unwrap_or(w),
            it.next().unwrap_or(w),
        ];
        match left {
            1 => pass::<1>(n, [f[0]], |k| w[k], sink),
            2 => pass::<2>(n, [f[0], f[1]], |k| w[k], sink),
            3 => pass::<3>(n, [f[0], f[1], f[2]], |k| w[k], sink),
            _ => pass::<4>(n, f, |k| w[k], sink),
        }
    }
}

/// One pass over `n` channels: `out(k, base(k) · Π_f f[k])`, with the product unrolled.
#[inline(always)]
fn pass<const M: usize>(
    n: usize,
    fs: [&[f32]; M],
    base: impl Fn(usize) -> f32,
    out: &mut impl FnMut(usize, f32),
) {
    let fs = fs.map(|f| &f[..n]);
    for k in 0..n {
        let mut v = base(k);
        for f in &fs {
            v *= f[k];
        }
        out(k, v);
    }
}

/// Asks for the cache lines of `v[at .. at + CHUNK]`: each layer is a separate stream and
/// the hardware prefetcher alone leaves the loads waiting on memory.
#[inline(always)]
fn prefetch(v: &[f32], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if at + CHUNK <= v.len() {
        for line in (0..CHUNK).step_by(16) {
            // SAFETY: prefetching is a hint; the address is inside `v`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    v.as_ptr().add(at + line).cast(),
                );
            }
        }
    }
}

#[inline(always)]
fn compose_kernel(x: &VolumeInputs, out: &mut [f32]) {
    let c = Constants::new(x);
    let mut t = Token::new(x);
    let (d, l) = (x.d, x.l);
    let (mut w, mut den) = ([0.0f32; CHUNK], [0.0f32; CHUNK]);
    for (p, o) in out.chunks_exact_mut(d).enumerate() {
        if !t.load(x, p) {
            o.fill(0.0);
            continue;
        }
        for c0 in (0..d).step_by(CHUNK) {
            let n = CHUNK.min(d - c0);
            let (w, den, num) = (&mut w[..n], &mut den[..n], &mut o[c0..c0 + n]);
            num.fill(0.0);
            den.fill(0.0);
            for a in 0..t.active.len() {
                let i = t.active[a].0;
                let at = (i * l + p) * d + c0;
                prefetch(x.layers, at + 2 * CHUNK);
                let z = &x.layers[at..][..n];
                t.weight(x, &c, a, c0, w, &mut |k, wk| {
                    num[k] = wk.mul_add(z[k], num[k]);
                    den[k] += wk;
                });
            }
            for (nc, &dc) in num.iter_mut().zip(den.iter()) {
                *nc = if dc > 0.0 { *nc / dc } else { 0.0 };
            }
        }
    }
}

/// Composes the layers into `out`, (L, D): Z of DESIGN.md §4.1.
pub fn compose(x: &VolumeInputs, out: &mut [f32]) {
    assert_eq!(out.len(), x.l * x.d, "output must be L×D");
    crate::with_avx2_fma(|| compose_kernel(x, out))
}

/// The unnormalised weights w_i(p), (K, L, D); zero where b_i(p) = 0.
pub fn weights(x: &VolumeInputs) -> Vec<f32> {
    let c = Constants::new(x);
    let mut t = Token::new(x);
    let (d, l) = (x.d, x.l);
    let mut out = vec![0.0f32; x.k * l * d];
    let mut scratch = vec![0.0f32; d];
    for p in 0..l {
        if !t.load(x, p) {
            continue;
        }
        for a in 0..t.active.len() {
            let i = t.active[a].0;
            let dst = &mut out[(i * l + p) * d..(i * l + p + 1) * d];
            t.weight(x, &c, a, 0, &mut scratch, &mut |k, wk| dst[k] = wk);
        }
    }
    out
}
