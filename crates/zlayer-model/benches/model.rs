//! CPU speed of the tiny model (issue 5), against peak sgemm measured in the same run
//! (DESIGN.md §7). Criterion's `Gelem/s` lines are GFLOP/s here: the training step and the
//! sgemm both count their matmul FLOPs, so the ratio of the two lines is the share of peak the
//! step achieves. `docs/performance.md` records a run.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zlayer_model::Config;
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::optim::{AdamWConfig, Trainer};
use zlayer_model::sampling::noise;
use zlayer_model::text::{TextConfig, Tokenizer};

const BATCH: usize = 16;
const GRID: usize = 16;
const PROMPT: &str =
    "a red sphere , a blue striped cube and a green glass disk on a sky background";

fn model(vm: &VarMap, dev: &Device) -> (BaseModel, TextConfig) {
    let words = PROMPT.split(' ').collect::<Vec<_>>();
    let tok = Tokenizer::new(words);
    let text = TextConfig {
        vocab: tok.len(),
        max_len: 64,
        width: 128,
        layers: 2,
        heads: 4,
        pooled: 128,
    };
    let m = BaseModel::new(
        &Config::tiny(),
        &text,
        tok,
        VarBuilder::from_varmap(vm, DType::F32, dev),
    )
    .expect("tiny model builds");
    (m, text)
}

/// Peak: one square sgemm through candle (and so through the same gemm crate).
fn sgemm(c: &mut Criterion) {
    zlayer_model::keep_freed_memory();
    let dev = Device::Cpu;
    let n = 1024;
    let a = noise((n, n), 1, &dev).unwrap();
    let b = noise((n, n), 2, &dev).unwrap();
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
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let (m, text) = model(&vm, &dev);
    let ids = m
        .tokenizer
        .batch(&vec![PROMPT; BATCH], text.max_len, &dev)
        .unwrap();
    let txt = ids.dim(1).unwrap();
    let x0 = noise((BATCH, GRID * GRID, 8), 3, &dev).unwrap();
    let mut tr = Trainer::new(&vm, AdamWConfig::default(), 0.999).unwrap();
    let flops = 3.0 * BaseModel::forward_flops(&Config::tiny(), &text, BATCH, GRID * GRID, txt);
    eprintln!(
        "train step: {BATCH} samples, {:.2} GFLOP counted ({txt} prompt tokens); samples/s = {BATCH} / time",
        flops / 1e9
    );
    let mut g = c.benchmark_group("tiny");
    g.sample_size(10);
    g.throughput(Throughput::Elements(flops as u64));
    let mut seed = 0;
    g.bench_function("train_step_b16", |b| {
        b.iter(|| {
            seed += 1;
            let loss = m.loss(&x0, &ids, (GRID, GRID), seed).unwrap();
            tr.step(&loss, 1e-4, 1.0).unwrap();
        })
    });
    g.finish();
}

/// Latency of one 64×64 image (16×16 latent tokens) at 20 Euler steps, without and with
/// classifier-free guidance (which doubles the forward passes).
fn sampling(c: &mut Criterion) {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let (m, text) = model(&vm, &dev);
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
