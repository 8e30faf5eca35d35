//! `zlayer eval`'s library path on 1,000 synthetic ground-truth scenes against themselves:
//! reading PNGs, segmenting, and every metric. Target: under 5 s.

use criterion::{Criterion, criterion_group, criterion_main};
use zlayer_synth::store::write_png_folder;
use zlayer_synth::{Params, Split, scene_at};

fn eval(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("zlayer-eval-bench-{}", std::process::id()));
    let params = Params::new(Split::Complex, 64);
    for i in 0..1000u64 {
        write_png_folder(&dir.join(format!("{i:06}")), &scene_at(0, i, &params)).unwrap();
    }
    let mut g = c.benchmark_group("eval");
    g.sample_size(10);
    g.bench_function("gt_vs_gt_1000_complex_64", |b| {
        b.iter(|| {
            let rs = zlayer_metrics::eval::evaluate_dirs(&dir, &dir).unwrap();
            assert_eq!(rs.len(), 1000);
            rs
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, eval);
criterion_main!(benches);
