//! Command-line flags and dispatch.

use crate::args::Target;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use zlayer_app::Failure;

/// zlayer: compose images from parts that know who stands in front of whom.
///
/// A scene is JSON: a canvas, a prompt, and instances with amodal boxes ("the whole object,
/// hidden part included"), captions and `occludes` relations. zlayer reads its own format and
/// the ones users already have (OcclusionFormer, InstanceAssemble, LaRender, GLIGEN,
/// InstaOrder), detected automatically. See docs/scene-format.md.
#[derive(Debug, Parser)]
#[command(name = "zlayer", version, about, long_about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  zlayer validate examples/sphere-cube.json
  zlayer preview examples/dense-8.json -o preview.png
  zlayer convert examples/larender-still-life.json --to occlusionformer
  zlayer compose back.png middle.png front.png -o stack.ora";

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a scene and print it in normalised native form.
    ///
    /// The normalised scene goes to stdout, warnings and errors to stderr. Exits with 2
    /// when the scene is invalid, naming the JSON path and instance of each problem.
    Validate {
        /// Scene file, in any supported format.
        file: PathBuf,
        /// Print one JSON object (scene, format, depth levels, diagnostics) instead.
        #[arg(long)]
        json: bool,
    },
    /// Draw what a scene declares, before anything is generated.
    ///
    /// Amodal boxes are coloured by depth level (front-most first in the legend), each
    /// labelled with its id and caption; an arrow goes from every occluder to what it
    /// covers; overlaps are hatched: grey where the order is declared, magenta where it is not.
    Preview {
        /// Scene file, in any supported format.
        file: PathBuf,
        /// Output PNG.
        #[arg(short, long)]
        output: PathBuf,
        /// Longest side of the picture in pixels.
        #[arg(long, default_value_t = 768, value_parser = clap::value_parser!(u32).range(64..=8192))]
        size: u32,
    },
    /// Rewrite a scene in another format.
    Convert {
        /// Scene file, in any supported format.
        file: PathBuf,
        /// Target format.
        #[arg(long, value_enum)]
        to: Target,
        /// Output file; stdout when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Generate SA-Z-synth scenes: images with exact amodal/visible masks, RGBA layers, Z-order.
    ///
    /// Three modes: `--n N --out DIR` writes a dataset; `--show K -o sheet.png` draws a
    /// contact sheet; `--vocab` prints the closed vocabulary as JSON. Scene k of a seed is
    /// byte-identical on every run; an interrupted dataset run resumes at the first missing shard.
    #[command(after_help = "Examples:
  zlayer synth --n 10000 --size 64 --split complex --seed 0 --out data/complex-64
  zlayer synth --show 16 --split regular -o sheet.png
  zlayer synth --vocab")]
    Synth(crate::synth_cmd::SynthArgs),
    /// Score generated images of synthetic scenes: occlusion order, layout, boundaries.
    ///
    /// Each predicted image is segmented by the declared instances' colours and boxes, then
    /// compared with the exact ground truth. Writes summary.json, summary.md and
    /// per_scene.csv (and metrics.png with --plot); prints the table. See docs/metrics.md.
    ///
    /// With --suite paper it generates the held-out scenes itself, with every method, and
    /// writes OcclusionFormer's main and ablation tables and an order-flip test as
    /// results.md (docs/results.md).
    #[command(after_help = "Examples:
  zlayer synth --n 300 --split complex --format png --out gt/complex
  zlayer eval --pred generated/ --gt gt/ --split complex --plot
  zlayer eval --suite paper --report docs    # every method, split, ablation; hours on a CPU, resumable")]
    Eval(crate::eval::EvalArgs),
    /// Generate images from a global prompt, or from a scene with the layout branch.
    ///
    /// Words must be in the model's vocabulary; open vocabulary needs the Flux-scale model.
    /// A scene is validated first (a cycle or a bad box never reaches the model); its boxes,
    /// captions and Z-order drive the layout branch (`models/tiny16/layout.safetensors`).
    #[command(after_help = "Examples:
  zlayer generate --prompt \"a red sphere in front of a blue cube on a sky background\" -o out.png --n 4
  zlayer generate examples/sphere-cube.json -o out.png --grounding-ratio 0.3
  zlayer generate --model flux-dev --weights FLUX.1-dev/ --occlusionformer bundle_weights.safetensors \\
      --clip-tokenizer clip-vit-large-patch14/tokenizer.json scene.json -o out.png   # GPU build, docs/flux-dev.md")]
    Generate(crate::generate::GenerateArgs),
    /// Put a new object into an image, in front of or behind what is there, without halos.
    ///
    /// The object is drawn in its box by the layout branch with the image kept around it,
    /// composited in latent space (DecFormer where the model has one: docs/pelc.md), and
    /// refined; only a band around it changes: every other pixel is the input's, bit for
    /// bit. With --scene, the new instance takes its place in the scene's order, and the
    /// updated scene, layers (.ora, .psd) follow.
    #[command(after_help = "Examples:
  zlayer generate examples/sphere-cube.json -o scene.png
  zlayer insert scene.png --scene examples/sphere-cube.json --caption \"green cone\" --box 96,160,256,400 \\
      --behind sphere -o inserted.png --scene-out inserted.json --ora inserted.ora
  zlayer insert --scene examples/sphere-cube.json --caption \"red disk\" --box 40,40,200,200 -o out.png   # generates the scene first
  zlayer insert photo.png --caption \"yellow star\" --box 10,10,30,30 --latent-blend linear -o out.png")]
    Insert(crate::insert::InsertArgs),
    /// Re-order, move or hide the instance layers of a layered file, and composite them
    /// exactly in pixels.
    ///
    /// Reads what zlayer writes (.ora/.psd from generate, insert or recompose, whose embedded
    /// metadata names the scene and which layer is which instance) or a `zlayer synth
    /// --format png` scene folder with its exact amodal layers. The original order gives back
    /// the original composite exactly.
    #[command(after_help = "Examples:
  zlayer synth --n 1 --size 256 --format png --out syn
  zlayer recompose syn/000000 --order 2,0,1,3,4 -o reordered.png   # front-most first
  zlayer recompose syn/000000 --hide 1 --move 0=30,-10 -o edited.ora --scene-out edited.json
  zlayer recompose layers.ora --scene edited.json -o out.psd")]
    Recompose(crate::recompose::RecomposeArgs),
    /// Split an image into its background plate and one amodal RGBA layer per instance of
    /// its scene, hidden parts included, with the multi-task layer model.
    ///
    /// The scene's boxes say where each instance is (its whole extent, hidden parts too),
    /// its captions what it is, and its `occludes` who is in front. The layers come out at
    /// the image's size: as PNGs (--out), OpenRaster (--ora) or PSD (--psd) with the scene
    /// embedded, so `zlayer recompose` can re-order, move or hide them.
    #[command(after_help = "Examples:
  zlayer synth --n 1 --size 64 --split complex --seed 7 --format png --out syn
  zlayer decompose syn/000000/image.png --scene syn/000000/scene.json --out layers --sheet sheet.png
  zlayer decompose photo.png --scene photo.json --ora photo.ora --layer-model runs/layers
  zlayer recompose photo.ora --order cube,sphere -o reordered.png")]
    Decompose(crate::decompose::DecomposeArgs),
    /// Time one FLUX.1-dev denoising step with random weights of the real width: the base
    /// against the layout branch with 1, 4, 8 and 16 instances (seconds, peak memory, ratios).
    ///
    /// Nothing to download: speed does not depend on the weights' values.
    #[command(after_help = "Examples:
  zlayer bench-step --device cuda                                  # 1024², the full 19 + 38 blocks
  zlayer bench-step --device cpu --size 512 --blocks 2,4 --repeats 1  # a CPU stand-in at reduced size")]
    BenchStep(crate::bench_step::BenchStepArgs),
    /// Time the tiny model's training step (batch 16: forward, backward, clip, AdamW, EMA)
    /// beside the peak sgemm on the same threads and, where a Python with torch is found,
    /// the PyTorch peer's same step; prints the table and the speed ratio.
    #[command(after_help = "Examples:
  zlayer bench-train                         # with ../shared/tools/peer_train_step.py when torch imports
  RAYON_NUM_THREADS=2 zlayer bench-train --steps 20 --python .venv/bin/python
  zlayer bench-train --no-peer --steps 5")]
    BenchTrain(crate::bench_train::BenchTrainArgs),
    /// Score the base model on held-out global prompts: does the metrics segmenter find every
    /// prompted colour in the generated image? Writes a summary, a CSV and a sample sheet.
    ///
    /// Example: `zlayer eval-prompts --model models/tiny16 --n 200 --guidance 2`
    EvalPrompts(crate::eval_prompts::EvalPromptsArgs),
    /// Compare trained layout branches on held-out synthetic scenes: each generates the same
    /// scenes from the same noise, and the metrics crate scores order, Occ. F1 and masks.
    ///
    /// Writes OUT/gt, one image folder per variant, summary.md/json and grid.png.
    #[command(after_help = "Example:
  zlayer eval-layout --layout runs/occ/layout.safetensors,runs/global/layout.safetensors --split complex --n 300 --out eval/complex")]
    EvalLayout(crate::eval_layout::EvalLayoutArgs),
    /// Score RGBA layers against SA-Z-synth's exact amodal layers: RGB L1 over visible and
    /// over hidden pixels, alpha SAD/MSE/Grad/Conn, for the cut-out baselines and, with
    /// --layer-model, a layer model's decompositions, raw and reconciled with the image.
    ///
    /// Writes OUT/layers-eval.md and .json; prints the table (docs/layers.md).
    #[command(after_help = "Example:
  zlayer eval-layers --n 100 --split complex --out layers-eval
  zlayer eval-layers --n 150 --layer-model runs/layers --out layers-eval")]
    EvalLayers(crate::eval_layers::EvalLayersArgs),
    /// Compare ways to blend two latents under a mask on held-out pairs: the linear blend
    /// with the area-downsampled mask, a trained DecFormer (PELC), and decode–composite–
    /// encode (the ceiling), each decoded and scored against the pixel composite.
    ///
    /// Writes OUT/pelc-eval.md/json (PSNR, SSIM, halo L1, time beside one DiT step) and
    /// OUT/pelc-curve.png (error against signed distance to the mask edge).
    #[command(after_help = "Examples:
  zlayer eval-pelc --pelc runs/pelc/pelc.safetensors --n 64 --out pelc-eval
  zlayer eval-pelc --vae models/tiny16/vae.safetensors   # the linear blend and the ceiling only")]
    EvalPelc(crate::eval_pelc::EvalPelcArgs),
    /// Serve the web layout editor and the HTTP API (validate, preview, convert, generate jobs).
    ///
    /// Opens on http://127.0.0.1:7878/ with the bundled model. Generation runs as jobs on a
    /// bounded queue, with progress over server-sent events; the API is described at
    /// /openapi.json (docs/server.md).
    #[command(after_help = "Examples:
  zlayer serve                                   # http://127.0.0.1:7878/
  zlayer serve --addr 0.0.0.0:8080 --token SECRET --workers 2 --queue 16")]
    Serve(crate::serve::ServeArgs),
    /// Train a model on SA-Z-synth, on the CPU (resumes from DIR's checkpoint).
    #[command(subcommand)]
    Train(crate::train::TrainCommand),
    /// Choose a trained branch's grounding ratio and layout guidance on validation scenes.
    ///
    /// Draws validation scenes (data seed + 2,000,000, never the evaluation's) at each
    /// candidate ratio, then at the best ratio with each candidate layout guidance, and records
    /// the pair with the best Occ. F1 in the branch's layout.json, which every command then
    /// samples with. `zlayer train layout` does this after training; this command re-tunes a
    /// branch trained before, or by `train grpo`.
    #[command(after_help = "Example:
  cp -r models/tiny16 my-model && zlayer tune --model my-model --tune-guidance 1,1.5,2,3")]
    Tune(crate::tune_cmd::TuneArgs),
    /// Stack PNG layers by source-over, first file at the bottom.
    ///
    /// Writes a flattened PNG, an OpenRaster (.ora) file that Krita and MyPaint open, or a
    /// Photoshop document (.psd) that GIMP, Photoshop and Krita open, the last two with every
    /// layer kept; the output's extension chooses.
    Compose {
        /// Layer PNGs, bottom first.
        #[arg(required = true)]
        layers: Vec<PathBuf>,
        /// Output .png, .ora or .psd.
        #[arg(short, long)]
        output: PathBuf,
        /// Write 16-bit PNGs instead of 8-bit.
        #[arg(long)]
        sixteen_bit: bool,
    },
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Validate { file, json } => crate::scene_cmd::validate(&file, json),
        Command::Preview { file, output, size } => crate::preview::run(&file, &output, size),
        Command::Convert { file, to, output } => {
            crate::scene_cmd::convert(&file, to, output.as_deref())
        }
        Command::Compose {
            layers,
            output,
            sixteen_bit,
        } => crate::compose::run(&layers, &output, sixteen_bit),
        Command::Synth(args) => crate::synth_cmd::run(args),
        Command::Eval(args) => crate::eval::run(args),
        Command::Train(cmd) => crate::train::run(cmd),
        Command::Tune(args) => crate::tune_cmd::run(args),
        Command::Generate(args) => crate::generate::run(args),
        Command::Insert(args) => crate::insert::run(args),
        Command::Recompose(args) => crate::recompose::run(args),
        Command::Decompose(args) => crate::decompose::run(args),
        Command::Serve(args) => crate::serve::run(args),
        Command::BenchStep(args) => crate::bench_step::run(args),
        Command::BenchTrain(args) => crate::bench_train::run(args),
        Command::EvalPrompts(args) => crate::eval_prompts::run(args),
        Command::EvalLayout(args) => crate::eval_layout::run(args),
        Command::EvalPelc(args) => crate::eval_pelc::run(args),
        Command::EvalLayers(args) => crate::eval_layers::run(args),
    }
}
