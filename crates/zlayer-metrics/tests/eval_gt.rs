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
    // Images only: the prediction is segmented.
    let pred = dir.join("pred");
    std::fs::create_dir_all(&pred).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.join("image.png").is_file() {
            std::fs::copy(
                p.join("image.png"),
                pred.join(format!("{}.png", p.file_name().unwrap().to_string_lossy())),
            )
            .unwrap();
        }
    }
    let rs = evaluate_dirs(&pred, &dir).unwrap();
    let s = summarize(&rs);
    assert_eq!(s.scenes, 120);
    assert!(s.pairs > 100, "{}", s.pairs);
    // Measured: 589 of 592 observable pairs; the segmenter, not the metric, misses them. Two
    // are glass over a colour that the mix nearly matches (such as blue glass over purple),
    // which the glass margin now gives to the colour: the price of robustness to noisy
    // images (docs/metrics.md, "Softened images"; 591 before it).
    assert!(s.order_accuracy.unwrap() >= 0.99, "{:?}", s.order_accuracy);
    assert!(s.occ_f1.unwrap() >= 0.995 && s.whdr.unwrap() <= 0.5);
    // Edge pixels and amodal-vs-visible boxes bound these below 1 (docs/metrics.md).
    assert!(
        s.mask_miou.unwrap() > 0.85 && s.box_miou.unwrap() > 0.7,
        "{s:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ground_truth_masks_as_predictions_score_perfectly() {
    // A prediction folder holding masks and layers (here: the ground truth itself) is scored
    // from them instead of from segmenting its image.
    let dir = std::env::temp_dir().join(format!("zlayer-eval-masks-{}", std::process::id()));
    for split in Split::ALL {
        for i in 0..30u64 {
            write_png_folder(
                &dir.join(format!("{}-{i:04}", split.name())),
                &scene_at(8, i, &Params::new(split, 64)),
            )
            .unwrap();
        }
    }
    let s = summarize(&evaluate_dirs(&dir, &dir).unwrap());
    assert!(s.pairs > 100);
    for (name, v) in [
        ("order", s.order_accuracy),
        ("F1", s.occ_f1),
        ("mIoU mask", s.mask_miou),
        ("O-mIoU mask", s.mask_o_miou),
        ("mIoU box", s.box_miou),
        ("O-mIoU box", s.box_o_miou),
        ("boundary F", s.boundary_f),
        ("boundary IoU", s.boundary_iou),
    ] {
        assert_eq!(v, Some(1.0), "{name}");
    }
    assert_eq!((s.whdr, s.halo_l1), (Some(0.0), Some(0.0)));
    assert!(s.error_curve.iter().all(|b| b.mean_error == 0.0));
    let m = s.matting.unwrap();
    assert_eq!((m.sad, m.mse, m.grad, m.conn), (0.0, 0.0, 0.0, 0.0));
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
