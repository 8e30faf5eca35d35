//! The layout branch's cost at generation (issue 6): one 64×64 image at 20 Euler steps with
//! 1, 4 and 8 instances against the base model alone, in the same run, plus 8 small boxes
//! against 1 box of the same total area (the branch should cost by box area, not by
//! instances × canvas). The branch runs on every step here (grounding ratio 1), so the ratios
//! are its full cost; at the default 0.3 only that share of the steps pays it.
//!
//! Peak heap per generation comes from a counting allocator and is printed to stderr (criterion
//! measures time only). `docs/performance.md` records a run.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use criterion::{Criterion, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use zlayer_model::Config;
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::layout_model::{Grounding, LayoutModel, SceneLayout, Variant};
use zlayer_model::text::{TextConfig, Tokenizer};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract for `alloc`.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let live = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as the caller's contract for `dealloc`.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const GRID: usize = 16;
const WORDS: &str = "a red blue green sphere cube disk on sky background";

/// The weights of `vm` as plain tensors, as a model loaded from a file has them (variables
/// would make every op record the autograd graph).
fn frozen(vm: &VarMap, dev: &Device) -> VarBuilder<'static> {
    let map: std::collections::HashMap<String, candle_core::Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    VarBuilder::from_tensors(map, DType::F32, dev)
}

fn model(dev: &Device) -> (LayoutModel, TextConfig) {
    let tok = Tokenizer::new(WORDS.split(' '));
    let text = TextConfig {
        vocab: tok.len(),
        max_len: 32,
        width: 128,
        layers: 2,
        heads: 4,
        pooled: 128,
    };
    let build = |base_vb: VarBuilder, branch_vb: VarBuilder| {
        let base = BaseModel::new(&Config::tiny(), &text, tok.clone(), base_vb)
            .expect("tiny model builds");
        LayoutModel::new(base, &[0], &[0, 3], 4, Variant::Occlusionformer, branch_vb)
            .expect("branch attaches")
    };
    // Initialise as variables, then rebuild from the same values as plain tensors.
    let (vm, branch) = (VarMap::new(), VarMap::new());
    build(
        VarBuilder::from_varmap(&vm, DType::F32, dev),
        VarBuilder::from_varmap(&branch, DType::F32, dev),
    );
    (build(frozen(&vm, dev), frozen(&branch, dev)), text)
}

/// A 64×64 scene of `k` boxes of side `side` px on a diagonal, each in front of the next.
fn scene(k: usize, side: u32) -> SceneLayout {
    let step = if k > 1 {
        (64 - side) / (k as u32 - 1)
    } else {
        0
    };
    let instances: Vec<String> = (0..k)
        .map(|i| {
            let o = i as u32 * step;
            let occ = if i + 1 < k {
                format!(r#", "occludes": ["i{}"]"#, i + 1)
            } else {
                String::new()
            };
            format!(
                r#"{{"id": "i{i}", "caption": "red sphere", "bbox": [{o}, {o}, {}, {}]{occ}}}"#,
                o + side,
                o + side
            )
        })
        .collect();
    let json = format!(
        r#"{{"width": 64, "height": 64, "prompt": "a red sphere on a sky background", "instances": [{}]}}"#,
        instances.join(", ")
    );
    let loaded = zlayer_scene::load_str(&json).expect("bench scene is valid");
    SceneLayout::from_scene(&loaded.scene, (GRID, GRID))
}

fn generation(c: &mut Criterion) {
    zlayer_model::keep_freed_memory();
    zlayer_model::fix_thread_count();
    let dev = Device::Cpu;
    let (m, text) = model(&dev);
    let ids = m
        .base
        .tokenizer
        .batch(&["a red sphere on a sky background"], text.max_len, &dev)
        .unwrap();
    let opts = SampleOptions {
        steps: 20,
        guidance: 1.0,
        seed: 1,
    };
    // A first run outside the measure: one-time allocations (thread pools, caches) are not
    // the generation's.
    let peak = |f: &dyn Fn()| {
        f();
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        f();
        PEAK.load(Ordering::Relaxed) - before
    };
    let mut g = c.benchmark_group("generate_64px_20_steps");
    g.sample_size(10);
    let base = || {
        m.base.sample(&ids, (GRID, GRID), 8, &opts).unwrap();
    };
    eprintln!("peak heap, base: {:.1} MB", peak(&base) as f64 / 1e6);
    g.bench_function("base", |b| b.iter(base));
    // 40-px boxes (10×10 tokens) for 1, 4, 8 instances; then 8 boxes of 14 px (≈ 1/8 the area
    // each, 4×4 tokens) against one 40-px box.
    for (label, k, side) in [
        ("1_instance", 1, 40),
        ("4_instances", 4, 40),
        ("8_instances", 8, 40),
        ("8_small_boxes", 8, 14),
    ] {
        let p = m.prepare(&[scene(k, side)], (GRID, GRID), &dev).unwrap();
        let run = || {
            m.sample(&ids, &p, 8, &opts, Grounding::ratio(1.0)).unwrap();
        };
        eprintln!(
            "peak heap, {label} ({} packed tokens): {:.1} MB",
            p.packing.n * (p.packing.len + 1),
            peak(&run) as f64 / 1e6
        );
        g.bench_function(label, |b| b.iter(run));
    }
    g.finish();
}

criterion_group!(benches, generation);
criterion_main!(benches);
