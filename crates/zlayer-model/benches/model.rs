//! CPU speed of the tiny model (issue 5), against peak sgemm measured in the same run
//! (DESIGN.md §7). Criterion's `Gelem/s` lines are GFLOP/s here: the training step and the
//! sgemm both count their matmul FLOPs, so the ratio of the two lines is the share of peak the
//! step achieves. `docs/performance.md` records a run; `zlayer bench-train` times the same
//! step beside the PyTorch peer.

use candle_core::Device;
use candle_nn::VarMap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zlayer_model::base::SampleOptions;
use zlayer_model::bench::{BATCH, GRID, PROMPT, TrainStep, sgemm_inputs, tiny_model};

/// Peak: one square sgemm through candle (and so through the same gemm crate).
fn sgemm(c: &mut Criterion) {
    zlayer_model::keep_freed_memory();
    zlayer_model::fix_thread_count();
    let n = 1024;
    let (a, b) = sgemm_inputs(n, &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("peak");
    g.sample_size(20);
    g.throughput(Throughput::Elements(2 * n as u64 * n as u64 * n as u64));
    g.bench_function("sgemm_1024", |bch| bch.iter(|| a.matmul(&b).unwrap()));
    g.finish();
}

/// One AdamW step of the base model on a batch of 16 latent images (16×16 tokens, 8
/// channels): forward, backward, clipping, update, EMA.
fn train_step(c: &mut Criterion) {
    zlayer_model::keep_freed_memory();
    zlayer_model::fix_thread_count();
    let mut step = TrainStep::new(&Device::Cpu).unwrap();
    eprintln!(
        "train step: {BATCH} samples, {:.2} GFLOP counted ({} prompt tokens); samples/s = {BATCH} / time",
        step.flops / 1e9,
        step.prompt_tokens
    );
    let mut g = c.benchmark_group("tiny");
    g.sample_size(10);
    g.throughput(Throughput::Elements(step.flops as u64));
    g.bench_function("train_step_b16", |b| b.iter(|| step.run().unwrap()));
    g.finish();
}

/// Latency of one 64×64 image (16×16 latent tokens) at 20 Euler steps, without and with
/// classifier-free guidance (which doubles the forward passes).
fn sampling(c: &mut Criterion) {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let (m, text) = tiny_model(&vm, &dev).unwrap();
    let ids = m.tokenizer.batch(&[PROMPT], text.max_len, &dev).unwrap();
    let mut g = c.benchmark_group("tiny_sample_64px_20_steps");
    g.sample_size(10);
    for guidance in [1.0, 3.0] {
        let opts = SampleOptions {
            steps: 20,
            guidance,
            seed: 5,
        };
        g.bench_function(format!("guidance_{guidance}"), |b| {
            b.iter(|| m.sample(&ids, (GRID, GRID), 8, &opts).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, sgemm, train_step, sampling);
criterion_main!(benches);
