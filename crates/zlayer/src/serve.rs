//! `zlayer serve`: the web layout editor and the HTTP API ([`zlayer_server`]).

use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use zlayer_app::Failure;
use zlayer_app::model::ModelDir;
use zlayer_server::Config;
use zlayer_server::jobs::Limits;

/// Flags of `zlayer serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Model folder, or `bundled` (the built-in models/tiny16).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// The layer model whose plate and amodal RGBA layers fill each job's layers.ora and
    /// layers.psd: `bundled`, a `zlayer train layers` folder, or `none` (cut-outs of the
    /// image by each instance's composition share).
    #[arg(long, default_value = zlayer_app::decompose::DEFAULT_LAYER_MODEL)]
    layer_model: std::path::PathBuf,
    /// A secret every request must send as `Authorization: Bearer SECRET`.
    #[arg(long)]
    token: Option<String>,
    /// Generation jobs run at once (each on its own thread).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Jobs that may wait for a worker; one more is answered 429 with Retry-After.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    queue: u32,
    /// Seconds one job may sample before it fails.
    #[arg(long, default_value_t = 300)]
    job_time: u64,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Seconds finished jobs and their files are kept.
    #[arg(long, default_value_t = 3600)]
    keep: u64,
    /// Finished jobs kept at most (the oldest go first).
    #[arg(long, default_value_t = 64)]
    keep_max: usize,
}

/// Runs the command.
pub fn run(a: ServeArgs) -> Result<(), Failure> {
    let cfg = Config {
        addr: a.addr,
        model: a.model,
        layer_model: (a.layer_model.as_os_str() != "none").then_some(a.layer_model),
        max_body: a.max_body,
        limits: Limits {
            queue: a.queue as usize,
            workers: a.workers as usize,
            job_time: Duration::from_secs(a.job_time),
            keep_for: Duration::from_secs(a.keep),
            keep_max: a.keep_max,
        },
        token: a.token,
    };
    zlayer_server::serve(cfg).map_err(Failure::User)
}
