//! `reconcile`: a layer stack's colours moved the least amount that makes its over-composite
//! the observed image, checked against a naive Porter-Duff composite on random stacks.

use proptest::prelude::*;
use zlayer_composite::reconcile::reconcile;

/// Back-to-front `over` of straight layers, bottom first, from transparent black.
fn naive(stack: &[Vec<[f32; 4]>], p: usize) -> [f32; 3] {
    let mut acc = [0f32; 3];
    for l in stack {
        let a = l[p][3];
        acc = [0, 1, 2].map(|c| l[p][c] * a + acc[c] * (1.0 - a));
    }
    acc
}

/// An alpha that is often exactly 0 or 1, as real layers' are.
fn alpha() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0]
}

/// An opaque plate under 0–6 layers, `pixels` each, and a target image.
fn case(pixels: usize) -> impl Strategy<Value = (Vec<Vec<[f32; 4]>>, Vec<[f32; 3]>)> {
    let px =
        (0.0f32..=1.0, 0.0f32..=1.0, 0.0f32..=1.0, alpha()).prop_map(|(r, g, b, a)| [r, g, b, a]);
    let layer = prop::collection::vec(px, pixels);
    let target = prop::collection::vec(
        (0.0f32..=1.0, 0.0f32..=1.0, 0.0f32..=1.0).prop_map(|(r, g, b)| [r, g, b]),
        pixels,
    );
    (prop::collection::vec(layer, 1..=7), target).prop_map(|(mut stack, t)| {
        for p in stack[0].iter_mut() {
            p[3] = 1.0;
        }
        (stack, t)
    })
}

fn run(stack: &mut [Vec<[f32; 4]>], target: &[[f32; 3]]) -> f32 {
    let mut refs: Vec<&mut [[f32; 4]]> = stack.iter_mut().map(|l| l.as_mut_slice()).collect();
    reconcile(&mut refs, target).unwrap()
}

/// Each layer's composite weight at pixel `p`: its alpha times the transmittance above it.
fn weights(stack: &[Vec<[f32; 4]>], p: usize) -> Vec<f32> {
    (0..stack.len())
        .map(|k| {
            stack[k][p][3]
                * stack[k + 1..]
                    .iter()
                    .map(|l| 1.0 - l[p][3])
                    .product::<f32>()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Over an opaque plate every target in [0, 1] is reachable: the composite becomes the
    /// target, alpha is untouched, colours stay in [0, 1], and a layer with no weight at a
    /// pixel (hidden or transparent) keeps its colour there.
    #[test]
    fn composite_meets_target((stack, target) in case(8)) {
        let mut out = stack.clone();
        let left = run(&mut out, &target);
        prop_assert!(left <= 2e-5, "error left {left}");
        for p in 0..target.len() {
            let got = naive(&out, p);
            for c in 0..3 {
                prop_assert!((got[c] - target[p][c]).abs() <= 3e-5, "pixel {p}: {got:?} against {:?}", target[p]);
            }
            let w = weights(&stack, p);
            for k in 0..stack.len() {
                prop_assert_eq!(out[k][p][3], stack[k][p][3]);
                prop_assert!(out[k][p].iter().all(|v| (0.0..=1.0).contains(v)));
                if w[k] == 0.0 {
                    prop_assert_eq!(out[k][p], stack[k][p]);
                }
            }
        }
    }

    /// Where no colour reaches a bound, the change is the least-norm one: along the weights,
    /// and shorter than the same change plus any move that leaves the composite as it is.
    #[test]
    fn change_is_least_norm((stack, _) in case(4), nudge in -0.02f32..0.02, other in prop::collection::vec(-1.0f32..1.0, 7)) {
        let mut stack = stack;
        for l in stack.iter_mut() {
            for p in l.iter_mut() {
                for v in &mut p[..3] {
                    *v = 0.1 + 0.8 * *v;
                }
            }
        }
        let target: Vec<[f32; 3]> = (0..4).map(|p| naive(&stack, p).map(|v| v + nudge)).collect();
        let mut out = stack.clone();
        run(&mut out, &target);
        for p in 0..4 {
            let w = weights(&stack, p);
            let norm: f32 = w.iter().map(|x| x * x).sum();
            let d: Vec<f32> = (0..stack.len()).map(|k| out[k][p][0] - stack[k][p][0]).collect();
            for k in 0..stack.len() {
                prop_assert!((d[k] - nudge * w[k] / norm).abs() <= 1e-4, "layer {k}: {} against {}", d[k], nudge * w[k] / norm);
            }
            // u ⟂ w: another change with the same composite.
            let u: Vec<f32> = (0..stack.len()).map(|k| other[k] - w[k] * (0..stack.len()).map(|j| other[j] * w[j]).sum::<f32>() / norm).collect();
            let len = |v: &dyn Fn(usize) -> f32| (0..stack.len()).map(|k| v(k) * v(k)).sum::<f32>();
            prop_assert!(len(&|k| d[k]) <= len(&|k| d[k] + u[k]) + 1e-9);
        }
    }
}

/// With nothing opaque under it, a pixel cannot reach every target: what is left is said,
/// and nothing becomes NaN.
#[test]
fn unreachable_target_is_reported() {
    let mut stack = vec![vec![[0.2, 0.2, 0.2, 0.5]; 3]];
    let left = run(&mut stack, &[[1.0, 1.0, 1.0]; 3]);
    assert!((left - 0.5).abs() < 1e-6, "{left}");
    assert!(stack[0].iter().all(|p| p.iter().all(|v| v.is_finite())));
    assert_eq!(stack[0][0], [1.0, 1.0, 1.0, 0.5]);
}

/// Layers of another size are named.
#[test]
fn size_mismatch_is_an_error() {
    let mut a = [[0.0; 4]; 4];
    let mut b = [[0.0; 4]; 3];
    let err = reconcile(&mut [&mut a[..], &mut b[..]], &[[0.0; 3]; 4]).unwrap_err();
    assert!(err.contains("layer 1 has 3 pixels"), "{err}");
}
