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
//! on box edges. Layers whose mask is 0 at a token are never read there. Where one layer's
//! occluders (among those covering the token) include another's, its T starts from that
//! one's: in a total order every layer multiplies in one new factor, not all of them.
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

/// Per-layer constants α_i and exp(−σ_i), (K, D), and D ones (an absent factor).
struct Constants {
    alpha: Vec<f32>,
    transmit: Vec<f32>,
    ones: Vec<f32>,
}

impl Constants {
    fn new(x: &VolumeInputs) -> Self {
        Self {
            transmit: x.sigma.iter().map(|&s| (-s).exp()).collect(),
            // −expm1(−σ), not 1 − exp(−σ): the latter cancels catastrophically for small σ.
            alpha: x.sigma.iter().map(|&s| -(-s).exp_m1()).collect(),
            ones: vec![1.0; x.d],
        }
    }
}

/// One covering layer of a token's plan: T_i = T_parent · Π factors, w_i = T_i · α_i · b_i.
struct Entry {
    layer: usize,
    b: f32,
    /// An earlier entry whose occluder set (among the layers covering the token) is a subset
    /// of this one's, so its T is reused: in a total order each layer costs one factor.
    parent: Option<usize>,
    /// The occluders not covered by the parent: a range of `Token::factors`.
    factors: std::ops::Range<usize>,
}

/// The plan for one token: which layers cover it, in an order where every parent comes
/// first, and which occluder factor each multiplies by: exp(−σ_j) where b_j = 1, or
/// exp(−σ_j b_j) (computed here) on box edges.
struct Token {
    active: Vec<Entry>,
    /// (occluder j, whether b_j is fractional).
    factors: Vec<(usize, bool)>,
    edge: Vec<f32>,
    /// Per covering layer: its occluders that cover the token, as a bit set (K ≤ 64).
    sets: Vec<(u64, usize)>,
}

impl Token {
    fn new(x: &VolumeInputs) -> Self {
        Self {
            active: Vec::with_capacity(x.k),
            factors: Vec::new(),
            edge: vec![0.0; x.k * x.d],
            sets: Vec::with_capacity(x.k),
        }
    }

    /// Plans token `p`; returns false when no layer covers it.
    fn load(&mut self, x: &VolumeInputs, p: usize) -> bool {
        let b = |j: usize| x.masks[j * x.l + p];
        self.active.clear();
        self.factors.clear();
        self.sets.clear();
        for j in 0..x.k {
            let bj = b(j);
            if bj > 0.0 && bj < 1.0 {
                let sig = &x.sigma[j * x.d..(j + 1) * x.d];
                for (f, &sg) in self.edge[j * x.d..(j + 1) * x.d].iter_mut().zip(sig) {
                    *f = (-sg * bj).exp();
                }
            }
        }
        let shared = x.k <= 64;
        for i in (0..x.k).filter(|&i| b(i) > 0.0) {
            let set = if shared {
                x.occluders[i]
                    .iter()
                    .filter(|&&j| b(j) > 0.0)
                    .fold(0u64, |s, &j| s | 1 << j)
            } else {
                0
            };
            self.sets.push((set, i));
        }
        if self.sets.is_empty() {
            return false;
        }
        // Smaller sets first, so that a parent is always planned (and computed) before.
        self.sets.sort_by_key(|&(set, i)| (set.count_ones(), i));
        for e in 0..self.sets.len() {
            let (set, i) = self.sets[e];
            let parent = (0..e)
                .filter(|&f| {
                    let s = self.sets[f].0;
                    s != 0 && s & set == s
                })
                .max_by_key(|&f| self.sets[f].0.count_ones());
            let start = self.factors.len();
            if shared {
                let rest = set & !parent.map_or(0, |f| self.sets[f].0);
                self.factors.extend(
                    (0..x.k)
                        .filter(|j| rest >> j & 1 == 1)
                        .map(|j| (j, b(j) < 1.0)),
                );
            } else {
                let covering = x.occluders[i].iter().filter(|&&j| b(j) > 0.0);
                self.factors.extend(covering.map(|&j| (j, b(j) < 1.0)));
            }
            self.active.push(Entry {
                layer: i,
                b: b(i),
                parent,
                factors: start..self.factors.len(),
            });
        }
        true
    }

    /// Computes T_i(p) on channels `c0 .. c0 + n` for the active entry `a` into its row of
    /// `trans` (rows of `stride` values, one per entry; the parents' rows are already
    /// filled) and hands w_i(p) to `sink(k, w)`.
    ///
    /// Factors are multiplied in four per pass, so a layer with seven new occluders costs two
    /// passes over the channels, not seven; one more feeds `sink`.
    #[inline(always)]
    fn weight(
        &self,
        x: &VolumeInputs,
        c: &Constants,
        a: usize,
        c0: usize,
        (trans, stride, n): (&mut [f32], usize, usize),
        sink: &mut impl FnMut(usize, f32),
    ) {
        let Entry {
            layer: i,
            b: bi,
            parent,
            factors: ref fs,
        } = self.active[a];
        let alpha = &c.alpha[i * x.d + c0..][..n];
        let (before, rest) = trans.split_at_mut(a * stride);
        let t = &mut rest[..n];
        let factor = |&(j, edge): &(usize, bool)| {
            let src = if edge { &self.edge } else { &c.transmit };
            &src[j * x.d + c0..][..n]
        };
        let mut it = self.factors[fs.clone()].iter().map(factor);
        let mut left = fs.len();
        let ones = &c.ones[..n];
        // T starts from the parent's (or ones); None: from what `t` holds already.
        let mut src: Option<&[f32]> = Some(parent.map_or(ones, |f| &before[f * stride..][..n]));
        // Four factors a pass into T until at most four are left for the last one.
        while left > 4 {
            let f = [(); 4].map(|_| it.next().unwrap());
            pass(src.take(), f, t, |_, _| {});
            left -= 4;
        }
        let alpha = &alpha[..n];
        let out = |k: usize, v: f32| sink(k, v * alpha[k] * bi);
        let mut f = || it.next().unwrap();
        match left {
            0 => pass::<0>(src, [], t, out),
            1 => pass(src, [f()], t, out),
            2 => pass(src, [f(), f()], t, out),
            3 => pass(src, [f(), f(), f()], t, out),
            _ => pass(src, [f(), f(), f(), f()], t, out),
        }
    }
}

/// One pass over the channels: `t[k] = src[k] · Π_f f[k]` (`t[k]` itself without `src`),
/// handed on as `out(k, t[k])`, with the product unrolled.
#[inline(always)]
fn pass<const M: usize>(
    src: Option<&[f32]>,
    fs: [&[f32]; M],
    t: &mut [f32],
    mut out: impl FnMut(usize, f32),
) {
    let n = t.len();
    let fs = fs.map(|f| &f[..n]);
    let product = |mut v: f32, k: usize| {
        for f in &fs {
            v *= f[k];
        }
        v
    };
    match src {
        Some(src) => {
            let src = &src[..n];
            for k in 0..n {
                t[k] = product(src[k], k);
                out(k, t[k]);
            }
        }
        None => {
            for (k, t) in t.iter_mut().enumerate() {
                *t = product(*t, k);
                out(k, *t);
            }
        }
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

/// Composes tokens `first ..` into `out` (whole tokens of D values).
#[inline(always)]
fn compose_kernel(x: &VolumeInputs, out: &mut [f32], first: usize) {
    let c = Constants::new(x);
    let mut t = Token::new(x);
    let (d, l) = (x.d, x.l);
    let mut trans = vec![0.0f32; x.k * CHUNK];
    let mut den = [0.0f32; CHUNK];
    for (p, o) in out.chunks_exact_mut(d).enumerate() {
        let p = first + p;
        if !t.load(x, p) {
            o.fill(0.0);
            continue;
        }
        for c0 in (0..d).step_by(CHUNK) {
            let n = CHUNK.min(d - c0);
            let (den, num) = (&mut den[..n], &mut o[c0..c0 + n]);
            num.fill(0.0);
            den.fill(0.0);
            for a in 0..t.active.len() {
                let at = (t.active[a].layer * l + p) * d + c0;
                prefetch(x.layers, at + 2 * CHUNK);
                let z = &x.layers[at..][..n];
                t.weight(x, &c, a, c0, (&mut trans, CHUNK, n), &mut |k, wk| {
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

/// Layer values below which one thread composes: a thread's start costs about what
/// composing 10^5 values does.
const PARALLEL_FROM: usize = 1 << 22;

/// Composes the layers into `out`, (L, D): Z of DESIGN.md §4.1. Large inputs are split by
/// tokens over the CPU's threads: one core alone cannot keep enough loads in flight to
/// stream K layers at memory speed.
pub fn compose(x: &VolumeInputs, out: &mut [f32]) {
    assert_eq!(out.len(), x.l * x.d, "output must be L×D");
    let threads = if x.layers.len() >= PARALLEL_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
    } else {
        1
    };
    let per = x.l.div_ceil(threads).max(1);
    let run = |o: &mut [f32], first| {
        crate::with_avx2_fma(
            #[inline(always)]
            || compose_kernel(x, o, first),
        )
    };
    std::thread::scope(|s| {
        let mut parts = out.chunks_mut(per * x.d).enumerate();
        let here = parts.next();
        for (n, o) in parts {
            s.spawn(move || run(o, n * per));
        }
        if let Some((_, o)) = here {
            run(o, 0);
        }
    });
}

/// The unnormalised weights w_i(p), (K, L, D); zero where b_i(p) = 0.
pub fn weights(x: &VolumeInputs) -> Vec<f32> {
    let c = Constants::new(x);
    let mut t = Token::new(x);
    let (d, l) = (x.d, x.l);
    let mut out = vec![0.0f32; x.k * l * d];
    let mut trans = vec![0.0f32; x.k * d];
    for p in 0..l {
        if !t.load(x, p) {
            continue;
        }
        for a in 0..t.active.len() {
            let i = t.active[a].layer;
            let dst = &mut out[(i * l + p) * d..(i * l + p + 1) * d];
            t.weight(x, &c, a, 0, (&mut trans, d, d), &mut |k, wk| dst[k] = wk);
        }
    }
    out
}
