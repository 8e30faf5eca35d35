//! The layer scores: exact layers score zero, cut-outs lose exactly the hidden part.

use zlayer_app::layer_eval::{baseline, evaluate};
use zlayer_synth::{Params, Split, scene_at};

#[test]
fn exact_layers_score_zero_and_every_instance_counts() {
    let scores = evaluate(
        &["exact", "visible-cutout"],
        1_000_000,
        12,
        64,
        Split::Complex,
    )
    .unwrap();
    let want: usize = (0..12)
        .map(|i| {
            scene_at(1_000_000, i, &Params::new(Split::Complex, 64))
                .layers
                .len()
        })
        .sum();
    let e = &scores[0];
    assert_eq!(
        (e.visible_l1, e.hidden_l1, e.sad, e.mse, e.grad, e.conn),
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    );
    assert_eq!(e.layers, want);
    assert!(
        scores[1].hidden_l1 > 0.1 && scores[1].sad > 0.0,
        "{:?}",
        scores[1]
    );
}

#[test]
fn a_cutout_is_the_image_where_it_keeps_the_instance_and_empty_elsewhere() {
    let s = scene_at(3, 7, &Params::new(Split::Regular, 64));
    let layers = baseline("segmenter-cutout", &s).unwrap();
    assert_eq!(layers.len(), s.layers.len());
    for l in &layers {
        for (p, &a) in l.alpha.iter().enumerate() {
            assert!(a == 0.0 || a == 1.0, "a hard cut-out");
            let want = s.image[p].map(|c| c as f32 / 255.0 * a);
            assert_eq!(l.premul[p], want);
        }
    }
    let e = baseline("amodal-magic", &s).err().unwrap();
    assert!(e.contains("segmenter-cutout"), "{e}");
}
