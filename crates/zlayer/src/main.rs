//! `zlayer`: validate, preview, convert and compose layered scenes.
//!
//! The binary is thin: it parses flags, calls the library crates and prints. Exit codes:
//! 0 success, 2 bad input (an invalid scene, a missing file, a wrong flag), 1 anything else.

mod args;
mod bench_step;
mod bench_train;
mod cli;
mod compose;
mod decompose;
mod eval;
mod eval_layers;
mod eval_layout;
mod eval_pelc;
mod eval_prompts;
mod generate;
mod insert;
mod preview;
mod recompose;
mod scene_cmd;
mod serve;
mod synth_cmd;
mod train;
mod tune_cmd;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    zlayer_model::keep_freed_memory();
    zlayer_model::fix_thread_count();
    if std::env::var_os("ZLAYER_KEEP_SUBNORMALS").is_none() {
        zlayer_model::flush_subnormals();
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.code())
        }
    }
}
