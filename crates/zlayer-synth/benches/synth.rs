//! Scenes per second on one core (rendering + ground truth), at 64² and 256², per split.
//! The target is ≥ 2,000 scenes/s at 64² so data never limits training.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use zlayer_synth::{Params, Split, scene_at};

fn synth(c: &mut Criterion) {
    for size in [64, 256] {
        let mut g = c.benchmark_group(format!("synth_{size}"));
        g.throughput(Throughput::Elements(1));
        for split in Split::ALL {
            let params = Params::new(split, size);
            let mut i = 0u64;
            g.bench_function(split.name(), |b| {
                b.iter(|| {
                    i += 1;
                    black_box(scene_at(1, i, &params))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, synth);
criterion_main!(benches);
