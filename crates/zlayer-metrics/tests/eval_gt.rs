//! Ground truth evaluated against itself, through files, as `zlayer eval` runs it.

use zlayer_metrics::eval::{evaluate_dirs, summarize};
use zlayer_synth::store::write_png_folder;
use zlayer_synth::{Params, Split, scene_at};

#[test]
fn ground_truth_against_itself_orders_pairs_correctly() {
    let dir = std::env::temp_dir().join(format!("zlayer-eval-gt-{}", std::process::id()));
    for split in Split::ALL {
        for i in 0..40u64 {
            write_png_folder(
                &dir.join(format!("{}-{i:04}", split.name())),
                &scene_at(4, i, &Params::new(split, 64)),
            )
            .unwrap();
        }
    }
    let rs = evaluate_dirs(&dir, &dir).unwrap();
    let s = summarize(&rs);
    eprintln!("{s:?}");
    assert_eq!(s.scenes, 120);
    assert!(s.pairs > 100, "{}", s.pairs);
    // Measured: 591 of 592 observable pairs (the segmenter, not the metric, misses one).
    assert!(s.order_accuracy.unwrap() >= 0.995, "{:?}", s.order_accuracy);
    assert!(s.occ_f1.unwrap() >= 0.995 && s.whdr.unwrap() <= 0.5);
    // Edge pixels and amodal-vs-visible boxes bound these below 1 (docs/metrics.md).
    assert!(
        s.mask_miou.unwrap() > 0.85 && s.box_miou.unwrap() > 0.7,
        "{s:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_prediction_names_the_file() {
    let gt = std::env::temp_dir().join(format!("zlayer-eval-missing-{}", std::process::id()));
    write_png_folder(
        &gt.join("000007"),
        &scene_at(1, 7, &Params::new(Split::Simple, 32)),
    )
    .unwrap();
    let pred = gt.join("nothing-here");
    std::fs::create_dir_all(&pred).unwrap();
    let e = evaluate_dirs(&pred, &gt).unwrap_err().to_string();
    assert!(
        e.contains("no prediction for scene \"000007\"") && e.contains("000007.png"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&gt);
}
