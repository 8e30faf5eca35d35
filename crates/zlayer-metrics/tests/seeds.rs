//! The seed summary recomputes `zlayer eval`'s measures from per_scene.csv exactly, and its
//! bootstrap interval behaves as a paired difference must.

use zlayer_metrics::eval::SceneResult;
use zlayer_metrics::occlusion::OcclusionScore;
use zlayer_metrics::seeds::{Measure, SceneTable, mean_std, paired_difference};
use zlayer_metrics::summary::{csv, summarize};
use zlayer_scene::rng::Rng;

/// A random scene result: some scenes without pairs or without masks, as real runs have.
fn random_result(rng: &mut Rng, k: usize) -> SceneResult {
    let maybe = |rng: &mut Rng, p: f32| (rng.f32() < p).then(|| rng.f32() as f64);
    let occlusion = (rng.f32() < 0.9).then(|| {
        let pairs = rng.below(14);
        let correct = if pairs == 0 { 0 } else { rng.below(pairs + 1) };
        OcclusionScore {
            pairs,
            correct,
            accuracy: (pairs > 0).then(|| correct as f64 / pairs as f64),
            occ_f1: rng.f32() as f64,
            precision: rng.f32() as f64,
            recall: rng.f32() as f64,
            whdr: (pairs > 0).then(|| 100.0 * rng.f32() as f64),
        }
    });
    SceneResult {
        name: format!("{k:06}"),
        status: "scored",
        instances: 2 + rng.below(6),
        ambiguous_pairs: 0,
        hidden_pairs: rng.below(3),
        occlusion,
        mask_miou: maybe(rng, 0.95),
        mask_o_miou: maybe(rng, 0.8),
        boxes: None,
        boundary_f: maybe(rng, 0.95),
        boundary_iou: maybe(rng, 0.95),
        halo_l1: maybe(rng, 0.95),
        curve: Vec::new(),
        matting: None,
        matting_whole: None,
    }
}

fn results(seed: u64, n: usize) -> Vec<SceneResult> {
    let mut rng = Rng::new(seed);
    (0..n).map(|k| random_result(&mut rng, k)).collect()
}

fn table(rs: &[SceneResult]) -> SceneTable {
    SceneTable::parse(&csv(rs)).expect("zlayer's own CSV parses")
}

fn refs(v: &[SceneTable]) -> Vec<&SceneTable> {
    v.iter().collect()
}

fn summary_value(s: &zlayer_metrics::summary::Summary, m: Measure) -> Option<f64> {
    match m {
        Measure::OrderAccuracy => s.order_accuracy,
        Measure::OccF1 => s.occ_f1,
        Measure::Whdr => s.whdr,
        Measure::MaskMiou => s.mask_miou,
        Measure::MaskOMiou => s.mask_o_miou,
        Measure::BoundaryF => s.boundary_f,
    }
}

#[test]
fn every_measure_matches_the_runs_own_summary() {
    // 200 random runs of up to 60 scenes; the CSV keeps 6 decimals, hence the tolerance.
    for seed in 0..200 {
        let rs = results(seed, 1 + (seed as usize * 7) % 60);
        let (t, s) = (table(&rs), summarize(&rs));
        for m in Measure::ALL {
            match (t.whole(m), summary_value(&s, m)) {
                (Some(a), Some(b)) => {
                    let tol = if m == Measure::Whdr { 1e-4 } else { 1e-6 };
                    assert!((a - b).abs() < tol, "seed {seed}, {m:?}: {a} against {b}");
                }
                (a, b) => assert_eq!(a.is_some(), b.is_some(), "seed {seed}, {m:?}"),
            }
        }
    }
}

#[test]
fn a_resampled_set_scores_as_a_run_over_those_scenes() {
    let rs = results(7, 40);
    let t = table(&rs);
    let mut rng = Rng::new(3);
    for _ in 0..100 {
        let idx: Vec<usize> = (0..40).map(|_| rng.below(40)).collect();
        let picked: Vec<SceneResult> = idx.iter().map(|&i| rs[i].clone()).collect();
        let s = summarize(&picked);
        for m in Measure::ALL {
            let (a, b) = (t.measure(m, &idx), summary_value(&s, m));
            assert_eq!(a.is_some(), b.is_some(), "{m:?}");
            if let (Some(a), Some(b)) = (a, b) {
                assert!((a - b).abs() < 1e-4, "{m:?}: {a} against {b}");
            }
        }
    }
}

#[test]
fn mean_and_std_match_the_textbook_formulas() {
    let mut rng = Rng::new(11);
    for n in 1..50 {
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let (m, s) = mean_std(&v).unwrap();
        let naive_m = v.iter().sum::<f64>() / n as f64;
        let naive_s = if n == 1 {
            0.0
        } else {
            (v.iter().map(|x| (x - naive_m) * (x - naive_m)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        assert!((m - naive_m).abs() < 1e-12 && (s - naive_s).abs() < 1e-12);
    }
    assert_eq!(mean_std(&[]), None);
}

#[test]
fn a_method_against_itself_differs_by_exactly_zero() {
    let seeds: Vec<SceneTable> = (0..3).map(|s| table(&results(s, 50))).collect();
    let d = paired_difference(&refs(&seeds), &refs(&seeds), Measure::OccF1, 500, 1)
        .unwrap()
        .unwrap();
    assert_eq!((d.mean, d.low, d.high), (0.0, 0.0, 0.0));
}

#[test]
fn a_constant_shift_is_found_with_a_zero_width_interval() {
    let base: Vec<Vec<SceneResult>> = (0..3).map(|s| results(s + 20, 80)).collect();
    let shifted: Vec<Vec<SceneResult>> = base
        .iter()
        .map(|rs| {
            rs.iter()
                .cloned()
                .map(|mut r| {
                    r.mask_miou = r.mask_miou.map(|v| v + 0.125);
                    r
                })
                .collect()
        })
        .collect();
    let t = |v: &[Vec<SceneResult>]| v.iter().map(|r| table(r)).collect::<Vec<_>>();
    let d = paired_difference(
        &refs(&t(&shifted)),
        &refs(&t(&base)),
        Measure::MaskMiou,
        400,
        2,
    )
    .unwrap()
    .unwrap();
    for v in [d.mean, d.low, d.high] {
        assert!((v - 0.125).abs() < 1e-6, "{d:?}");
    }
}

#[test]
fn the_interval_holds_the_estimate_and_narrows_with_more_scenes() {
    let width = |n: usize| {
        let a: Vec<SceneTable> = (0..3).map(|s| table(&results(s + 100, n))).collect();
        let b: Vec<SceneTable> = (0..3).map(|s| table(&results(s + 200, n))).collect();
        let d = paired_difference(&refs(&a), &refs(&b), Measure::OccF1, 1000, 5)
            .unwrap()
            .unwrap();
        assert!(d.low <= d.mean && d.mean <= d.high, "{d:?}");
        d.high - d.low
    };
    let (narrow, wide) = (width(1600), width(25));
    assert!(narrow < wide / 3.0, "{narrow} against {wide}");
}

#[test]
fn runs_over_different_scenes_are_refused() {
    let a = vec![table(&results(1, 30))];
    let b = vec![table(&results(1, 31))];
    let e = paired_difference(&refs(&a), &refs(&b), Measure::OccF1, 10, 0).unwrap_err();
    assert!(e.contains("same held-out scenes"), "{e}");
    let e = paired_difference(&refs(&a), &[], Measure::OccF1, 10, 0).unwrap_err();
    assert!(e.contains("one of each per seed"), "{e}");
}

#[test]
fn bad_files_get_errors_that_say_where() {
    let e = SceneTable::parse("scene,pairs\n").unwrap_err();
    assert!(e.contains("no column \"correct\""), "{e}");
    let good = csv(&results(4, 3));
    let header = good.lines().next().unwrap();
    let bad = format!("{header}\n000000,scored,3,2,1,0,0,0.5,abc,50,0.5,0.5,,,0.5,0.5,0.1,,,,\n");
    let e = SceneTable::parse(&bad).unwrap_err();
    assert!(e.starts_with("line 2, column \"occ_f1\": \"abc\""), "{e}");
    let bad = format!("{header}\n000000,scored,3,2.5,1,0,0,0.5,0.5,50,0.5,0.5,,,0.5,0.5,0.1,,,,\n");
    let e = SceneTable::parse(&bad).unwrap_err();
    assert!(
        e.contains("column \"pairs\": \"2.5\" is not a count"),
        "{e}"
    );
    let short = format!("{header}\n000000,scored\n");
    let e = SceneTable::parse(&short).unwrap_err();
    assert!(e.contains("line 2: 2 cells"), "{e}");
    assert_eq!(SceneTable::parse("").unwrap_err(), "empty file");
}
