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

/// Per-layer constants: α_i and exp(−σ_i), each (K, D).
struct Constants {
    alpha: Vec<f32>,
    transmit: Vec<f32>,
}

impl Constants {
    fn new(x: &VolumeInputs) -> Self {
        let transmit = x.sigma.iter().map(|&s| (-s).exp()).collect();
        // −expm1(−σ), not 1 − exp(−σ): the latter cancels catastrophically for small σ.
        let alpha = x.sigma.iter().map(|&s| -(-s).exp_m1()).collect();
        Self { alpha, transmit }
    }
}

/// Scratch for one token: edge factors exp(−σ_j b_j) (K, D) and the weight being built (D).
struct Scratch {
    factor: Vec<f32>,
    w: Vec<f32>,
}

impl Scratch {
    fn new(k: usize, d: usize) -> Self {
        Self {
            factor: vec![0.0; k * d],
            w: vec![0.0; d],
        }
    }
}

/// Computes w_i(p) for every layer with b_i(p) > 0 at token `p`, handing each to `visit`.
#[inline]
fn token_weights(
    x: &VolumeInputs,
    c: &Constants,
    s: &mut Scratch,
    p: usize,
    mut visit: impl FnMut(usize, &[f32]),
) {
    let d = x.d;
    let b = |j: usize| x.masks[j * x.l + p];
    for j in 0..x.k {
        let bj = b(j);
        if bj > 0.0 && bj < 1.0 {
            let sig = &x.sigma[j * d..(j + 1) * d];
            for (f, &sg) in s.factor[j * d..(j + 1) * d].iter_mut().zip(sig) {
                *f = (-sg * bj).exp();
            }
        }
    }
    for i in 0..x.k {
        let bi = b(i);
        if bi <= 0.0 {
            continue;
        }
        for (wc, &a) in s.w.iter_mut().zip(&c.alpha[i * d..(i + 1) * d]) {
            *wc = a * bi;
        }
        for &j in &x.occluders[i] {
            let bj = b(j);
            let f = if bj <= 0.0 {
                continue;
            } else if bj >= 1.0 {
                &c.transmit[j * d..(j + 1) * d]
            } else {
                &s.factor[j * d..(j + 1) * d]
            };
            for (wc, &fc) in s.w.iter_mut().zip(f) {
                *wc *= fc;
            }
        }
        visit(i, &s.w);
    }
}

/// Composes the layers into `out`, (L, D): Z of DESIGN.md §4.1.
pub fn compose(x: &VolumeInputs, out: &mut [f32]) {
    assert_eq!(out.len(), x.l * x.d, "output must be L×D");
    let c = Constants::new(x);
    let mut s = Scratch::new(x.k, x.d);
    let (d, l) = (x.d, x.l);
    let mut den = vec![0.0f32; d];
    for (p, o) in out.chunks_exact_mut(d).enumerate() {
        o.fill(0.0);
        den.fill(0.0);
        let mut any = false;
        token_weights(x, &c, &mut s, p, |i, w| {
            any = true;
            let z = &x.layers[(i * l + p) * d..(i * l + p + 1) * d];
            for ((oc, dc), (&wc, &zc)) in o.iter_mut().zip(den.iter_mut()).zip(w.iter().zip(z)) {
                *oc += wc * zc;
                *dc += wc;
            }
        });
        if any {
            for (oc, &dc) in o.iter_mut().zip(&den) {
                *oc = if dc > 0.0 { *oc / dc } else { 0.0 };
            }
        }
    }
}

/// The unnormalised weights w_i(p), (K, L, D); zero where b_i(p) = 0.
pub fn weights(x: &VolumeInputs) -> Vec<f32> {
    let c = Constants::new(x);
    let mut s = Scratch::new(x.k, x.d);
    let (d, l) = (x.d, x.l);
    let mut out = vec![0.0f32; x.k * l * d];
    for p in 0..l {
        token_weights(x, &c, &mut s, p, |i, w| {
            out[(i * l + p) * d..(i * l + p + 1) * d].copy_from_slice(w);
        });
    }
    out
}
