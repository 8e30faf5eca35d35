//! Bandwidth of the compositing kernels, each against a memcpy of the same bytes measured in
//! the same run (DESIGN.md §7). Read the ratio off criterion's throughput lines:
//! kernel GiB/s ÷ memcpy GiB/s. `docs/performance.md` records a run.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use zlayer_composite::rgba::{Premul, Premul8, Straight, over_stack, over_stack8};
use zlayer_composite::volume::{VolumeInputs, compose};
use zlayer_scene::{BBox, TokenGrid};

struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Eight layers on the Flux.1-dev token grid at 1024² (64×64 tokens, 3072 channels).
fn volume(c: &mut Criterion) {
    const K: usize = 8;
    const D: usize = 3072;
    let grid = TokenGrid::new(64, 64);
    let l = grid.len();
    let mut r = Lcg(7);
    let layers: Vec<f32> = (0..K * l * D).map(|_| r.f() * 2.0 - 1.0).collect();
    let sigma: Vec<f32> = (0..K * D).map(|_| r.f() * 5.0).collect();
    // Total order, every layer in front of all earlier ones: the worst case for T_i.
    let occluders: Vec<Vec<usize>> = (0..K).map(|i| (i + 1..K).collect()).collect();
    let scenes = [
        // Boxes of 40–90% of each side, off-grid edges: a dense realistic layout.
        (
            "boxes",
            (0..K)
                .flat_map(|_| {
                    let (w, h) = (0.4 + 0.5 * r.f(), 0.4 + 0.5 * r.f());
                    let (x, y) = ((1.0 - w) * r.f(), (1.0 - h) * r.f());
                    let b = BBox::new(
                        (x * 1024.0) as f64 + 0.5,
                        (y * 1024.0) as f64 + 0.5,
                        ((x + w) * 1024.0) as f64,
                        ((y + h) * 1024.0) as f64,
                    );
                    grid.soft_box_mask(b, 1024, 1024).data
                })
                .collect::<Vec<f32>>(),
        ),
        // Every layer covers the whole canvas: every byte of every layer is read.
        ("full", vec![1.0f32; K * l]),
    ];
    let mut out = vec![0.0f32; l * D];
    let mut copy = vec![0.0f32; layers.len()];
    let mut g = c.benchmark_group("volume_8x64x64x3072");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((layers.len() * 4) as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| copy.copy_from_slice(black_box(&layers)))
    });
    // compose splits large inputs over the CPU's threads; so does this copy, for a fair ratio.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    g.bench_function(format!("memcpy_{threads}_threads"), |b| {
        let per = layers.len().div_ceil(threads);
        b.iter(|| {
            std::thread::scope(|s| {
                for (dst, src) in copy.chunks_mut(per).zip(black_box(&layers).chunks(per)) {
                    s.spawn(move || dst.copy_from_slice(src));
                }
            })
        })
    });
    for (name, masks) in &scenes {
        let read: f32 = masks.iter().filter(|&&m| m > 0.0).count() as f32 / masks.len() as f32;
        eprintln!("volume/{name}: {:.0}% of layer rows are read", read * 100.0);
        let x = VolumeInputs::new(l, D, &layers, &sigma, masks, &occluders).unwrap();
        g.bench_function(*name, |b| b.iter(|| compose(black_box(&x), &mut out)));
    }
    g.finish();
}

/// Eight RGBA layers at 4096×4096, f32 and u8 premultiplied.
fn porter_duff(c: &mut Criterion) {
    const K: usize = 8;
    const N: usize = 4096 * 4096;
    let mut r = Lcg(3);
    let px = |r: &mut Lcg| Straight([r.f(), r.f(), r.f(), r.f()]);
    {
        let one: Vec<Premul> = (0..N).map(|_| px(&mut r).premultiply()).collect();
        let layers: Vec<Vec<Premul>> = (0..K)
            .map(|k| one.iter().map(|p| p.scale(1.0 - k as f32 * 0.01)).collect())
            .collect();
        drop(one);
        let refs: Vec<&[Premul]> = layers.iter().map(Vec::as_slice).collect();
        let mut out = vec![Premul::default(); N];
        let mut g = c.benchmark_group("over_8x4096x4096_f32");
        g.sample_size(10);
        g.throughput(Throughput::Bytes((K * N * 16) as u64));
        let flat: Vec<Premul> = layers.concat();
        let mut copy = vec![Premul::default(); flat.len()];
        g.bench_function("memcpy", |b| {
            b.iter(|| copy.copy_from_slice(black_box(&flat)))
        });
        drop((flat, copy));
        g.bench_function("over", |b| {
            b.iter(|| over_stack(black_box(&refs), &mut out))
        });
        g.finish();
    }
    {
        let layers: Vec<Vec<Premul8>> = (0..K)
            .map(|_| (0..N).map(|_| px(&mut r).to_u8().premultiply()).collect())
            .collect();
        let refs: Vec<&[Premul8]> = layers.iter().map(Vec::as_slice).collect();
        let mut out = vec![Premul8::default(); N];
        let mut g = c.benchmark_group("over_8x4096x4096_u8");
        g.sample_size(10);
        g.throughput(Throughput::Bytes((K * N * 4) as u64));
        let flat: Vec<Premul8> = layers.concat();
        let mut copy = vec![Premul8::default(); flat.len()];
        g.bench_function("memcpy", |b| {
            b.iter(|| copy.copy_from_slice(black_box(&flat)))
        });
        drop((flat, copy));
        g.bench_function("over", |b| {
            b.iter(|| over_stack8(black_box(&refs), &mut out))
        });
        g.finish();
    }
}

criterion_group!(benches, volume, porter_duff);
criterion_main!(benches);
