//! The matting metrics against values computed with mmeval on six reference cases
//! (`../shared/fixtures/matting-reference`), plus hand-computed cases.

use safetensors::SafeTensors;
use zlayer_metrics::matting::{Region, conn, grad, matting, mse, sad};

#[test]
fn reproduces_mmeval_on_the_reference_cases() {
    let Some(dir) = zlayer_testkit::fixtures("matting-reference") else {
        return;
    };
    let bytes = std::fs::read(dir.join("cases.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let values: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.json")).unwrap()).unwrap();
    let f64s = |name: &str| -> (Vec<f64>, Vec<usize>) {
        let t = st.tensor(name).unwrap();
        (
            t.data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            t.shape().to_vec(),
        )
    };
    for k in 0..6 {
        let (pred, shape) = f64s(&format!("case{k}.pred"));
        let (gt, _) = f64s(&format!("case{k}.gt"));
        let trimap = st
            .tensor(&format!("case{k}.trimap"))
            .unwrap()
            .data()
            .to_vec();
        let (h, w) = (shape[0], shape[1]);
        let m = matting(&pred, &gt, w, h, Region::Unknown(&trimap));
        let want = &values["values"][format!("case{k}")];
        for (name, got) in [
            ("sad", m.sad),
            ("mse", m.mse),
            ("grad", m.grad),
            ("conn", m.conn),
        ] {
            let w = want[name].as_f64().unwrap();
            assert!(
                (got - w).abs() <= 1e-6 * w.abs().max(1e-12),
                "case{k} {name}: {got} vs mmeval {w}"
            );
        }
    }
}

#[test]
fn sad_and_mse_by_hand() {
    // Four pixels, two unknown: |0.5 − 0.25| + |1 − 0| = 1.25 → SAD 0.00125;
    // MSE = (0.0625 + 1) / 2.
    let pred = [0.5, 1.0, 0.3, 0.0];
    let gt = [0.25, 0.0, 0.3, 0.0];
    let tri = [128, 128, 255, 0];
    assert_eq!(sad(&pred, &gt, Region::Unknown(&tri)), 0.00125);
    assert_eq!(mse(&pred, &gt, Region::Unknown(&tri)), 0.53125);
    assert_eq!(
        mse(&pred, &gt, Region::Unknown(&[0; 4])),
        0.0,
        "no unknown pixels"
    );
}

#[test]
fn perfect_predictions_score_zero() {
    let gt: Vec<f64> = (0..400).map(|i| ((i * 37) % 101) as f64 / 100.0).collect();
    let m = matting(&gt, &gt, 20, 20, Region::Whole);
    assert_eq!((m.sad, m.mse, m.grad, m.conn), (0.0, 0.0, 0.0, 0.0));
}

#[test]
fn grad_of_a_step_by_hand() {
    // A constant prediction has zero gradient after min-max (all zeros); the ground truth is a
    // vertical step, whose normalised gradient at the step is the kernel's column sum.
    let (w, h) = (12, 3);
    let gt: Vec<f64> = (0..w * h)
        .map(|p| if p % w >= 6 { 1.0 } else { 0.0 })
        .collect();
    let pred = vec![0.7; w * h];
    let g = grad(&pred, &gt, w, h, Region::Whole);
    // mmeval 0.2: gt = zeros((3, 12)); gt[:, 6:] = 1; pred = full((3, 12), 0.7);
    // GradientError().add([pred], [gt], [full((3, 12), 128, uint8)]) → 0.0587721480192486.
    assert!((g - 0.0587721480192486).abs() < 1e-12, "{g}");
    // Symmetry: swapping prediction and truth gives the same error.
    assert_eq!(g, grad(&gt, &pred, w, h, Region::Whole));
}

#[test]
fn conn_by_hand() {
    // 1×3 strip: g = [1, 1, 0], p = [1, 0.5, 0]. At t = 0.1 … 0.5 the component {0, 1} holds
    // pixel 1; at t = 0.6 it leaves, so l₁ = 0.5 (pixel 0 never leaves: l₀ = 1; pixel 2 leaves
    // at 0.1: l₂ = 0). d_g = 1 − 0.5 = 0.5 → φ_g = 0.5; d_p = 0.5 − 0.5 = 0 → φ_p = 1.
    // Conn = |1 − 0.5| / 1000 = 0.0005 (pixels 0 and 2 agree).
    let gt = [1.0, 1.0, 0.0];
    let pred = [1.0, 0.5, 0.0];
    assert!((conn(&pred, &gt, 3, 1, Region::Whole) - 0.0005).abs() < 1e-15);
}
