//! Volume-rendering composition against a plain f64 transcription of DESIGN.md §4.1, on
//! random inputs, plus the analytical cases.

use proptest::prelude::*;
use zlayer_composite::volume::{VolumeInputs, compose, weights};

/// The formulas as written, in f64: exp of the summed optical depth, no shortcuts.
fn naive(
    l: usize,
    d: usize,
    z: &[f32],
    sigma: &[f32],
    b: &[f32],
    occ: &[Vec<usize>],
) -> (Vec<f64>, Vec<f64>) {
    let k = occ.len();
    let mut out = vec![0.0; l * d];
    let mut w_all = vec![0.0; k * l * d];
    for p in 0..l {
        for c in 0..d {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for i in 0..k {
                let s = |j: usize| sigma[j * d + c] as f64;
                let alpha = 1.0 - (-s(i)).exp();
                let t = (-occ[i]
                    .iter()
                    .map(|&j| s(j) * b[j * l + p] as f64)
                    .sum::<f64>())
                .exp();
                let w = t * alpha * b[i * l + p] as f64;
                w_all[(i * l + p) * d + c] = w;
                num += w * z[(i * l + p) * d + c] as f64;
                den += w;
            }
            out[p * d + c] = if den > 0.0 { num / den } else { 0.0 };
        }
    }
    (out, w_all)
}

/// A random acyclic occluder structure: j can occlude i only when j > i.
/// (L, D, layers, sigma, masks, occluder sets).
type Case = (usize, usize, Vec<f32>, Vec<f32>, Vec<f32>, Vec<Vec<usize>>);

fn case() -> impl Strategy<Value = Case> {
    (1usize..12, 1usize..8, 1usize..6).prop_flat_map(|(k, l, d)| {
        let mask = prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..1.0];
        (
            Just(k),
            Just(l),
            Just(d),
            prop::collection::vec(-1.0f32..1.0, k * l * d),
            prop::collection::vec(0.0f32..8.0, k * d),
            prop::collection::vec(mask, k * l),
            prop::collection::vec(prop::collection::vec(any::<bool>(), k), k),
        )
            .prop_map(|(k, l, d, z, s, b, adj)| {
                let occ = (0..k)
                    .map(|i| (i + 1..k).filter(|&j| adj[i][j]).collect())
                    .collect();
                (l, d, z, s, b, occ)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn matches_the_naive_formula((l, d, z, s, b, occ) in case()) {
        let x = VolumeInputs::new(l, d, &z, &s, &b, &occ).unwrap();
        let mut out = vec![f32::NAN; l * d];
        compose(&x, &mut out);
        let (want, want_w) = naive(l, d, &z, &s, &b, &occ);
        for (g, w) in out.iter().zip(&want) {
            prop_assert!((*g as f64 - w).abs() <= 1e-6, "compose {g} vs {w}");
        }
        for (g, w) in weights(&x).iter().zip(&want_w) {
            prop_assert!((*g as f64 - w).abs() <= 1e-6 * w.abs().max(1e-3), "weight {g} vs {w}");
        }
    }
}

#[test]
fn opaque_front_layer_takes_the_overlap() {
    // Two full-token layers, 1 in front of 0; σ large enough that α_1 = 1 in f32.
    let (l, d) = (1, 2);
    let z = [0.3, -0.2, 0.9, 0.5];
    let s = [1.0, 2.0, 60.0, 60.0];
    let occ = vec![vec![1], vec![]];
    let x = VolumeInputs::new(l, d, &z, &s, &[1.0, 1.0], &occ).unwrap();
    let mut out = [0.0; 2];
    compose(&x, &mut out);
    assert_eq!(out, [0.9, 0.5]);
}

#[test]
fn infinite_density_front_wins_everywhere_it_covers() {
    // σ → ∞: the front layer's weight is b_1 and the back one's is multiplied by e^{−∞·b_1}.
    let (l, d) = (3, 1);
    let z = [1.0, 1.0, 1.0, 5.0, 5.0, 5.0];
    let s = [3.0, f32::INFINITY];
    let b = [1.0, 1.0, 1.0, 0.0, 0.5, 1.0];
    let occ = vec![vec![1], vec![]];
    let x = VolumeInputs::new(l, d, &z, &s, &b, &occ).unwrap();
    let mut out = [0.0; 3];
    compose(&x, &mut out);
    assert_eq!(
        out,
        [1.0, 5.0, 5.0],
        "outside the front box the back layer shows"
    );
}

#[test]
fn unordered_overlap_is_an_alpha_weighted_average() {
    let (l, d) = (1, 1);
    let (s0, s1) = (0.5f32, 2.0f32);
    let (a0, a1) = (1.0 - (-s0).exp(), 1.0 - (-s1).exp());
    let occ = vec![vec![], vec![]];
    let sigma = [s0, s1];
    let x = VolumeInputs::new(l, d, &[2.0, -1.0], &sigma, &[1.0, 1.0], &occ).unwrap();
    let mut out = [0.0];
    compose(&x, &mut out);
    let want = (a0 * 2.0 - a1) / (a0 + a1);
    assert!((out[0] - want).abs() < 1e-6, "{} vs {want}", out[0]);
}

#[test]
fn nothing_covers_gives_zero() {
    let occ = vec![vec![]];
    let x = VolumeInputs::new(2, 1, &[4.0, 4.0], &[1.0], &[0.0, 0.0], &occ).unwrap();
    let mut out = [f32::NAN; 2];
    compose(&x, &mut out);
    assert_eq!(out, [0.0, 0.0]);
    // σ = 0 everywhere: α = 0, so the weight sum is 0 even inside the box.
    let x = VolumeInputs::new(1, 1, &[4.0], &[0.0], &[1.0], &occ).unwrap();
    compose(&x, &mut out[..1]);
    assert_eq!(out[0], 0.0);
}

#[test]
fn shape_errors_name_the_tensor() {
    let e = VolumeInputs::new(2, 3, &[0.0; 5], &[0.0; 3], &[0.0; 2], &[vec![]]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "volume composition: layers has 5 values, expected 6 (K=1 layers, L=2 tokens, D=3 channels)"
    );
    assert!(VolumeInputs::new(1, 1, &[0.0; 2], &[0.0; 2], &[0.0; 2], &[vec![5], vec![]]).is_err());
}

/// Reproducible uniform values in [0, 1) (a 64-bit LCG's high bits).
fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut r = seed;
    move || {
        r = r
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (r >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[test]
fn more_than_64_layers_match_the_naive_formula() {
    // Past 64 layers the plan keeps no occluder bit sets and multiplies every factor.
    let (k, l, d) = (70, 3, 4);
    let mut f = uniform(1);
    let z: Vec<f32> = (0..k * l * d).map(|_| f() * 2.0 - 1.0).collect();
    let s: Vec<f32> = (0..k * d).map(|_| f() * 0.1).collect();
    let b: Vec<f32> = (0..k * l).map(|i| [1.0, 0.0, f()][i % 3]).collect();
    let occ: Vec<Vec<usize>> = (0..k).map(|i| (i + 1..k).step_by(2).collect()).collect();
    let x = VolumeInputs::new(l, d, &z, &s, &b, &occ).unwrap();
    let mut out = vec![f32::NAN; l * d];
    compose(&x, &mut out);
    let (want, want_w) = naive(l, d, &z, &s, &b, &occ);
    for (g, w) in out.iter().zip(&want) {
        assert!((*g as f64 - w).abs() <= 1e-5, "compose {g} vs {w}");
    }
    for (g, w) in weights(&x).iter().zip(&want_w) {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * w.abs().max(1e-3),
            "weight {g} vs {w}"
        );
    }
}

#[test]
fn large_inputs_split_over_threads_compose_every_token() {
    // Over 2^22 layer values compose splits the tokens over threads; an odd token count
    // checks the split's edges. The reference is Σ w z / Σ w from the (single-threaded)
    // weights.
    let (k, l, d) = (3, 4099, 384);
    let mut f = uniform(7);
    let z: Vec<f32> = (0..k * l * d).map(|_| f() * 2.0 - 1.0).collect();
    let s: Vec<f32> = (0..k * d).map(|_| f() * 4.0).collect();
    let b: Vec<f32> = (0..k * l).map(|i| [1.0, 0.0, 0.5, 1.0][i % 4]).collect();
    let occ = vec![vec![1, 2], vec![2], vec![]];
    let x = VolumeInputs::new(l, d, &z, &s, &b, &occ).unwrap();
    assert!(z.len() >= 1 << 22);
    let mut out = vec![f32::NAN; l * d];
    compose(&x, &mut out);
    let w = weights(&x);
    for p in 0..l {
        for c in 0..d {
            let at = |i: usize| (i * l + p) * d + c;
            let num: f64 = (0..k).map(|i| w[at(i)] as f64 * z[at(i)] as f64).sum();
            let den: f64 = (0..k).map(|i| w[at(i)] as f64).sum();
            let want = if den > 0.0 { num / den } else { 0.0 };
            let got = out[p * d + c] as f64;
            assert!(
                (got - want).abs() <= 1e-5,
                "token {p} channel {c}: {got} vs {want}"
            );
        }
    }
}
