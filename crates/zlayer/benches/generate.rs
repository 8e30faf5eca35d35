//! `zlayer generate` as a user runs it, one process per image: wall time and peak resident
//! memory for the base model and for scenes of 1, 4 and 8 instances with the bundled branch
//! (20 steps, every step grounded), as ratios to the base in the same run.
//!
//! `cargo bench -p zlayer --bench generate` (builds the release binary first). Each case runs
//! REPS times, interleaved with the others so that load drifts hit every case alike; the
//! median is reported.

use std::path::Path;
use std::process::Command;
use std::time::Instant;
use zlayer_model::bench::median;

const REPS: usize = 5;
const COLOURS: [&str; 8] = [
    "red", "blue", "green", "yellow", "purple", "orange", "cyan", "pink",
];
const SHAPES: [&str; 8] = [
    "sphere", "cube", "disk", "star", "square", "ring", "cylinder", "cross",
];

/// A 64 px scene of `k` 40 px boxes (10 × 10 latent tokens each), stepped diagonally, each
/// in front of the next.
fn scene(k: usize) -> String {
    let inst: Vec<String> = (0..k)
        .map(|i| {
            let o = 3 * i;
            let occ = if i + 1 < k {
                format!(r#", "occludes": ["{}"]"#, i + 1)
            } else {
                String::new()
            };
            format!(
                r#"{{"id": "{i}", "caption": "{} {}", "bbox": [{o}, {o}, {}, {}]{occ}}}"#,
                COLOURS[i],
                SHAPES[i],
                o + 40,
                o + 40
            )
        })
        .collect();
    format!(
        r#"{{"width": 64, "height": 64, "prompt": "a red sphere on a sky background", "instances": [{}]}}"#,
        inst.join(", ")
    )
}

/// One run: (seconds, peak MB) as the process reports them.
fn run(bin: &str, args: &[&str], out: &Path) -> (f64, f64) {
    let start = Instant::now();
    let o = Command::new(bin)
        .args(args)
        .args(["-o", out.to_str().unwrap(), "--grounding-ratio", "1"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("zlayer runs");
    let secs = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let mb = err
        .split("peak memory ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    (secs, mb)
}

fn main() {
    let bin = env!("CARGO_BIN_EXE_zlayer");
    let dir = std::env::temp_dir().join(format!("zlayer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cases: Vec<(String, Vec<String>)> = vec![(
        "base (prompt only)".into(),
        vec![
            "generate".into(),
            "--prompt".into(),
            "a red sphere on a sky background".into(),
        ],
    )];
    for k in [1, 4, 8] {
        let f = dir.join(format!("scene-{k}.json"));
        std::fs::write(&f, scene(k)).unwrap();
        cases.push((
            format!("{k} instance{}", if k > 1 { "s" } else { "" }),
            vec!["generate".into(), f.to_str().unwrap().into()],
        ));
    }
    let mut runs = vec![(Vec::new(), Vec::new()); cases.len()];
    for _ in 0..REPS {
        for (c, (_, args)) in cases.iter().enumerate() {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (s, mb) = run(bin, &args, &dir.join("out.png"));
            runs[c].0.push(s);
            runs[c].1.push(mb);
        }
    }
    let (t0, m0) = (median(runs[0].0.clone()), median(runs[0].1.clone()));
    println!("| case | s/image | × base | peak RSS (MB) | × base |\n|---|---|---|---|---|");
    for ((name, _), (t, m)) in cases.iter().zip(runs) {
        let (t, m) = (median(t), median(m));
        println!(
            "| {name} | {t:.2} | {:.2} | {m:.0} | {:.2} |",
            t / t0,
            m / m0
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
