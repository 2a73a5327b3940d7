//! `cema-sim`: CEMA end to end on this machine. `demo` starts a real cloud and real edge
//! agents (separate processes on loopback), streams Fashion-MNIST shift scenarios through
//! them and reports accuracy with and without adaptation; `eval` compares methods on the same
//! streams; both write `summary.md`, `results.json` and PNG plots into a run folder.

mod bench;
mod common;
mod demo;
mod eval;
mod harm;

use clap::{Parser, Subcommand};

/// CEMA end to end: real cloud, real edges, shift scenarios, reports.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One cloud and several edges, each on its own continual shift stream (the 15 benchmark
    /// corruptions split between them), without adaptation vs with CEMA, in lockstep and in
    /// real time. Prints a table; writes summary.md, results.json and plots.
    Demo(demo::DemoArgs),
    /// Methods compared on the same streams and seeds: none, bn-stats, upload-all,
    /// eata-select, cema-reference, cema-paper. Ends with `cema_minus_none=… cema_uploaded=…`.
    Eval(eval::EvalArgs),
    /// The system's figures: edge throughput vs raw ONNX Runtime and selection overhead
    /// (`cema-edge bench`), then `cema-reference` and `upload-all` on the same continual stream
    /// through a real cloud in lockstep: bytes per uploaded sample, update latency (upload
    /// acknowledged → parameters applied on the edge) p50/p99, cloud step time, and accuracy
    /// gained per uploaded megabyte against upload-all. Ends with one `key=value` line.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::demo(args),
        Command::Eval(args) => eval::eval(args),
        Command::Bench(args) => bench::bench(args),
    };
    if let Err(e) = result {
        eprintln!("cema-sim: error: {e:#}");
        std::process::exit(1);
    }
}
