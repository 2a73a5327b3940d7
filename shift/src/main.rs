//! `cema-shift`: look at, export and time the distribution shifts CEMA is tested under.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cema_shift::dataset::{self, Split, write_idx_images, write_idx_labels};
use cema_shift::{Corruption, Dataset, Image, sheet};
use clap::{Parser, Subcommand, ValueEnum};
use rayon::prelude::*;

/// Reproducible ImageNet-C-style corruptions of real data (Fashion-MNIST by default).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Folder with the Fashion-MNIST IDX files (default: $CEMA_FASHION_MNIST_DIR, then Debian's path).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a contact sheet PNG: rows = corruptions, columns = clean and severities 1–5.
    Sheet {
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// How many test images to show side by side.
        #[arg(long, default_value_t = 2)]
        images: usize,
        /// Scale factor of each cell.
        #[arg(long, default_value_t = 3)]
        zoom: usize,
        /// Seed of the corruption noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Export a corrupted copy of a Fashion-MNIST split, as IDX files or PNG class folders.
    Export {
        /// Corruption name, e.g. gaussian_noise (see `cema-shift list`).
        #[arg(long)]
        corruption: Corruption,
        /// Severity 1–5.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
        severity: u8,
        /// Output folder (created).
        #[arg(long)]
        out: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Idx)]
        format: Format,
        /// Which split.
        #[arg(long, value_enum, default_value_t = SplitArg::Test)]
        split: SplitArg,
        /// Export only the first N images.
        #[arg(long)]
        limit: Option<usize>,
        /// Seed of the corruption noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// List the corruptions.
    List,
    /// Time corrupting the 10,000 test images with each corruption (prints; asserts nothing).
    Bench {
        /// Severity to time.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=5))]
        severity: u8,
        /// Use only the first N test images.
        #[arg(long)]
        limit: Option<usize>,
        /// Skip the single-threaded pass.
        #[arg(long)]
        parallel_only: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// `t10k-images-idx3-ubyte` + `t10k-labels-idx1-ubyte` (uncompressed).
    Idx,
    /// One folder per class of PNG files, loadable as a labelled image folder.
    Png,
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Train,
    Test,
}

fn load(data_dir: &Option<PathBuf>, split: Split) -> Result<Dataset> {
    let dir = match data_dir {
        Some(dir) => dir.clone(),
        None => dataset::fashion_mnist_dir()?,
    };
    dataset::load_fashion_mnist(&dir, split).with_context(|| format!("loading Fashion-MNIST from {}", dir.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for c in Corruption::all() {
                let kind = if Corruption::BENCHMARK.contains(&c) { "benchmark" } else { "extra" };
                println!("{:<18} {kind}", c.name());
            }
        }
        Command::Sheet { out, images, zoom, seed } => {
            let data = load(&cli.data_dir, Split::Test)?;
            if images == 0 || images > data.len() {
                bail!("--images must be between 1 and {}", data.len());
            }
            let picked: Vec<Image> = (0..images).map(|i| data.images[i * 7].clone()).collect();
            let corruptions: Vec<Corruption> = Corruption::all().collect();
            let png = sheet::contact_sheet(&picked, &corruptions, zoom.max(1), seed);
            png.save_png(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} ({}×{} px; rows: {})", out.display(), png.width, png.height, names(&corruptions));
        }
        Command::Export { corruption, severity, out, format, split, limit, seed } => {
            let split = match split {
                SplitArg::Train => Split::Train,
                SplitArg::Test => Split::Test,
            };
            let data = load(&cli.data_dir, split)?;
            let n = limit.unwrap_or(data.len()).min(data.len());
            let started = Instant::now();
            let images: Vec<Image> =
                (0..n).into_par_iter().map(|i| corruption.apply(&data.images[i], severity, seed, i as u64)).collect();
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            export(&out, format, split, &images, &data.labels[..n], &data.classes)?;
            println!(
                "exported {n} images ({corruption}, severity {severity}, seed {seed}) to {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Bench { severity, limit, parallel_only } => bench(&cli.data_dir, severity, limit, parallel_only)?,
    }
    Ok(())
}

fn names(corruptions: &[Corruption]) -> String {
    corruptions.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

fn export(
    out: &Path,
    format: Format,
    split: Split,
    images: &[Image],
    labels: &[u32],
    classes: &[String],
) -> Result<()> {
    match format {
        Format::Idx => {
            let prefix = if split == Split::Test { "t10k" } else { "train" };
            write_idx_images(&out.join(format!("{prefix}-images-idx3-ubyte")), images)?;
            write_idx_labels(&out.join(format!("{prefix}-labels-idx1-ubyte")), labels)?;
        }
        Format::Png => {
            for (i, (image, &label)) in images.iter().zip(labels).enumerate() {
                let class = classes[label as usize].replace('/', "-");
                let dir = out.join(&class);
                std::fs::create_dir_all(&dir)?;
                image.save_png(&dir.join(format!("{i:05}.png")))?;
            }
        }
    }
    Ok(())
}

fn time_corruption(pool: &rayon::ThreadPool, images: &[Image], corruption: Corruption, severity: u8) -> f64 {
    let started = Instant::now();
    pool.install(|| {
        images.par_iter().enumerate().for_each(|(i, image)| {
            std::hint::black_box(corruption.apply(image, severity, 0, i as u64));
        })
    });
    started.elapsed().as_secs_f64()
}

fn bench(data_dir: &Option<PathBuf>, severity: u8, limit: Option<usize>, parallel_only: bool) -> Result<()> {
    let data = load(data_dir, Split::Test)?;
    let n = limit.unwrap_or(data.len()).min(data.len());
    let images = &data.images[..n];
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    let single = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let all = rayon::ThreadPoolBuilder::new().num_threads(cores).build()?;
    println!("corrupting {n} Fashion-MNIST test images at severity {severity} (1 thread vs {cores})");
    println!("{:<18} {:>10} {:>10}", "corruption", "1 thread s", format!("{cores} threads s"));
    let (mut total_single, mut total_all) = (0.0, 0.0);
    for corruption in Corruption::all() {
        let one = if parallel_only { f64::NAN } else { time_corruption(&single, images, corruption, severity) };
        let many = time_corruption(&all, images, corruption, severity);
        if Corruption::BENCHMARK.contains(&corruption) {
            total_single += one;
            total_all += many;
        }
        println!("{:<18} {one:>10.2} {many:>10.2}", corruption.name());
    }
    println!(
        "images={n} severity={severity} threads={cores} seconds_all={total_all:.2} seconds_all_single_thread={total_single:.2}"
    );
    Ok(())
}
