//! `zlayer bench-step`: one FLUX.1-dev denoising step with random weights of the real width,
//! the base against the layout branch with K instances: seconds per step, peak memory, and
//! the branch's overhead (docs/performance.md). Speed does not depend on the weights' values,
//! so nothing needs downloading. Each configuration runs in a fresh process, so that its peak
//! memory is its own.

use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::time::Instant;
use zlayer_app::Failure;
use zlayer_model::branch::LayoutInput;
use zlayer_model::config::Config;
use zlayer_model::dit::{Flux, FluxInput};
use zlayer_model::layout::LayoutNet;
use zlayer_model::layout_model::{Prepared, SceneLayout, Variant};

/// The official branch blocks on FLUX.1-dev.
const DOUBLE: [usize; 7] = [0, 3, 6, 9, 12, 15, 18];
const SINGLE: [usize; 5] = [0, 9, 18, 27, 37];

/// Flags of `zlayer bench-step`.
#[derive(Debug, Args)]
pub struct BenchStepArgs {
    /// Image side in pixels (a multiple of 16).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Instance counts to measure; 0 is the base, without the branch.
    #[arg(long, value_delimiter = ',', default_value = "0,1,4,8,16")]
    instances: Vec<usize>,
    /// Double and single blocks to build, as D,S (FLUX.1-dev: 19,38). The branch sits in the
    /// official blocks among them (double 0, 3, …, 18; single 0, 9, 18, 27, 37).
    #[arg(long, default_value = "19,38")]
    blocks: String,
    /// Rounds: each measures every instance count once, in a fresh process, one timed step
    /// after a warm-up; the median over rounds is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// cuda (bf16) or cpu (f32) [default: cuda when built with it].
    #[arg(long)]
    device: Option<String>,
    /// Measure one instance count in this process and print it as JSON (used by the parent).
    #[arg(long, hide = true)]
    one: Option<usize>,
}

/// One configuration's figures.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Measured {
    instances: usize,
    secs: f64,
    peak_mb: Option<f64>,
}

fn blocks(s: &str) -> Result<(usize, usize), Failure> {
    let bad = || Failure::User(format!("--blocks {s:?}: expected D,S, e.g. 19,38"));
    let (d, s) = s.split_once(',').ok_or_else(bad)?;
    Ok((
        d.trim().parse().map_err(|_| bad())?,
        s.trim().parse().map_err(|_| bad())?,
    ))
}

/// `k` boxes of 40% of the side, stepped diagonally, each in front of the next.
fn layout(k: usize, size: usize) -> Result<SceneLayout, Failure> {
    let side = size * 2 / 5;
    let step = (size - side) / k.max(1);
    let inst: Vec<serde_json::Value> = (0..k)
        .map(|i| {
            let o = i * step;
            let occ: Vec<String> = (i + 1 < k).then(|| (i + 1).to_string()).into_iter().collect();
            serde_json::json!({"id": i.to_string(), "caption": "object", "bbox": [o, o, o + side, o + side], "occludes": occ})
        })
        .collect();
    let json =
        serde_json::json!({"width": size, "height": size, "prompt": "bench", "instances": inst});
    let loaded = zlayer_scene::load_str(&json.to_string())
        .map_err(|e| Failure::Internal(format!("bench scene: {e:?}")))?;
    Ok(SceneLayout::from_scene(
        &loaded.scene,
        (size / 16, size / 16),
    ))
}

/// Times one configuration in this process.
fn measure(a: &BenchStepArgs, k: usize, dev: &Device) -> Result<Measured, Failure> {
    let int = |e: candle_core::Error| Failure::Internal(e.to_string());
    let (depth, single) = blocks(&a.blocks)?;
    let cfg = Config {
        depth,
        depth_single_blocks: single,
        ..Config::flux_dev()
    };
    let dtype = zlayer_model::flux_dev::run_dtype(dev);
    let vb = zlayer_model::init::noise_weights(dtype, dev);
    let mut flux = Flux::new(&cfg, vb.clone()).map_err(int)?;
    let (d, s): (Vec<usize>, Vec<usize>) = (
        DOUBLE.iter().copied().filter(|&i| i < depth).collect(),
        SINGLE.iter().copied().filter(|&i| i < single).collect(),
    );
    // The official rank 4, fused over up to four projections as checkpoints are applied.
    flux.attach_layout(&d, &s, 16, vb.clone()).map_err(int)?;
    let net = LayoutNet::new(cfg.vec_in_dim, cfg.hidden_size, vb.pp("layout_net")).map_err(int)?;
    let g = a.size / 16;
    let rnd =
        |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, dev).and_then(|t| t.to_dtype(dtype));
    let img = rnd(&[1, g * g, cfg.in_channels]).map_err(int)?;
    let txt = rnd(&[1, 512, cfg.context_in_dim]).map_err(int)?;
    let y = rnd(&[1, cfg.vec_in_dim]).map_err(int)?;
    let img_ids = zlayer_model::base::BaseModel::image_ids(1, g, g, dev).map_err(int)?;
    let txt_ids = Tensor::zeros((1, 512, 3), DType::F32, dev).map_err(int)?;
    let t = Tensor::full(0.5f32, 1, dev)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(int)?;
    let guidance = Tensor::full(3.5f32, 1, dev)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(int)?;
    let x = FluxInput {
        img: &img,
        img_ids: &img_ids,
        txt: &txt,
        txt_ids: &txt_ids,
        timesteps: &t,
        y: &y,
        guidance: Some(&guidance),
    };
    let prepared = if k > 0 {
        let l = layout(k, a.size)?;
        let p = Prepared::new(&[l], (g, g), rnd(&[k, cfg.vec_in_dim]).map_err(int)?, false)
            .map_err(int)?;
        let tokens = net.forward(&p.pooled, &p.points).map_err(int)?;
        Some((p, tokens))
    } else {
        None
    };
    let input: Option<LayoutInput> = prepared
        .as_ref()
        .map(|(p, tok)| p.input(tok, Variant::Occlusionformer));
    let mut times = Vec::new();
    for r in 0..=a.repeats {
        let start = Instant::now();
        let v = flux.forward_layout(&x, input.as_ref()).map_err(int)?.0;
        dev.synchronize().map_err(int)?;
        drop(v);
        if r > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Measured {
        instances: k,
        secs: times[times.len() / 2],
        // The host's peak; a GPU's is not tracked.
        peak_mb: dev.is_cpu().then(zlayer_app::output::peak_rss_mb).flatten(),
    })
}

/// Runs `zlayer bench-step`.
pub fn run(a: BenchStepArgs) -> Result<(), Failure> {
    if a.size == 0 || !a.size.is_multiple_of(16) || a.repeats == 0 {
        return Err(Failure::User(format!(
            "--size {} must be a positive multiple of 16 and --repeats at least 1",
            a.size
        )));
    }
    let (depth, single) = blocks(&a.blocks)?;
    let dev = zlayer_app::device::device(a.device.as_deref())?;
    if let Some(k) = a.one {
        let m = measure(&a, k, &dev)?;
        println!("{}", serde_json::to_string(&m).unwrap_or_default());
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| Failure::Internal(e.to_string()))?;
    // Rounds, each measuring every count once in a fresh process: a load that drifts during
    // the run then hits every count alike, and each process's peak memory is its own.
    let mut runs: Vec<Vec<Measured>> = (0..a.instances.len()).map(|_| Vec::new()).collect();
    for round in 0..a.repeats {
        for (i, &k) in a.instances.iter().enumerate() {
            eprintln!("round {} of {}: {k} instance(s)…", round + 1, a.repeats);
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "bench-step",
                "--size",
                &a.size.to_string(),
                "--blocks",
                &a.blocks,
            ])
            .args(["--repeats", "1", "--one", &k.to_string()]);
            if let Some(d) = &a.device {
                cmd.args(["--device", d]);
            }
            let out = cmd.output().map_err(|e| Failure::Internal(e.to_string()))?;
            if !out.status.success() {
                return Err(Failure::Internal(format!(
                    "{k} instances: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            let m: Measured = serde_json::from_slice(&out.stdout)
                .map_err(|e| Failure::Internal(format!("{k} instances: {e}")))?;
            runs[i].push(m);
        }
    }
    let rows: Vec<Measured> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|x, y| x.secs.total_cmp(&y.secs));
            r.swap_remove(r.len() / 2)
        })
        .collect();
    let base = rows.iter().find(|m| m.instances == 0);
    println!(
        "one denoising step, {0}×{0} px ({1} image + 512 text tokens), FLUX.1-dev width, {depth} double + {single} single blocks, {2}, median of {3} round(s)",
        a.size,
        (a.size / 16) * (a.size / 16),
        if dev.is_cpu() { "CPU f32" } else { "GPU bf16" },
        a.repeats
    );
    println!("| instances | s/step | × base | peak memory MB | × base |");
    println!("|---|---|---|---|---|");
    for m in &rows {
        let ratio = |x: f64, b: f64| format!("{:.2}", x / b);
        let (ts, ms) = match base {
            Some(b) => (
                ratio(m.secs, b.secs),
                match (m.peak_mb, b.peak_mb) {
                    (Some(x), Some(y)) => ratio(x, y),
                    _ => "–".into(),
                },
            ),
            None => ("–".into(), "–".into()),
        };
        let mb = m.peak_mb.map_or("–".into(), |v| format!("{v:.0}"));
        println!("| {} | {:.3} | {ts} | {mb} | {ms} |", m.instances, m.secs);
    }
    Ok(())
}
