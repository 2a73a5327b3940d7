//! Labelled image data sets: Fashion-MNIST from IDX files and labelled image folders.

mod folder;
mod idx;

use std::path::{Path, PathBuf};

pub use folder::{FolderOptions, load_folder, load_image};
pub use idx::{read_idx_images, read_idx_labels, write_idx_images, write_idx_labels};

use crate::image::Image;

/// Environment variable naming a folder with the Fashion-MNIST IDX files.
pub const FASHION_MNIST_ENV: &str = "CEMA_FASHION_MNIST_DIR";
/// Where Debian's `dataset-fashion-mnist` installs them.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Why a data set could not be loaded. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the expected IDX magic number.
    #[error("{path} is not an IDX {kind} file: magic 0x{found:08x}, expected 0x{expected:08x}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: &'static str,
        /// The magic expected.
        expected: u32,
        /// The magic found.
        found: u32,
    },
    /// The file ends before the data its header declares.
    #[error("{path} is truncated: header declares {expected} bytes of data, found {actual}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes declared.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// Images and labels disagree in number.
    #[error("{images} images but {labels} labels")]
    CountMismatch {
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },
    /// An image file could not be decoded.
    #[error("cannot decode image {path}: {reason}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A folder data set is malformed (no classes, unknown label in the CSV, …).
    #[error("{path}: {reason}")]
    Layout {
        /// The folder or CSV.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The Fashion-MNIST files were not found anywhere.
    #[error(
        "Fashion-MNIST not found (looked in {looked}); run scripts/setup.sh (Debian package dataset-fashion-mnist) or set {FASHION_MNIST_ENV}"
    )]
    NotFound {
        /// The folders looked in.
        looked: String,
    },
}

/// Images with integer labels and class names.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The images, all of one size and channel count.
    pub images: Vec<Image>,
    /// One label per image, an index into `classes`.
    pub labels: Vec<u32>,
    /// Class names.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Which half of Fashion-MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images.
    Train,
    /// The 10,000 test images.
    Test,
}

/// The folder holding Fashion-MNIST: `$CEMA_FASHION_MNIST_DIR`, else Debian's path.
pub fn fashion_mnist_dir() -> Result<PathBuf, DatasetError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(FASHION_MNIST_ENV) {
        candidates.push(PathBuf::from(dir));
    }
    candidates.push(PathBuf::from(FASHION_MNIST_DEBIAN_DIR));
    candidates
        .iter()
        .find(|dir| dir.join("t10k-images-idx3-ubyte.gz").is_file() || dir.join("t10k-images-idx3-ubyte").is_file())
        .cloned()
        .ok_or_else(|| DatasetError::NotFound {
            looked: candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        })
}

/// Loads one split of Fashion-MNIST from `dir` (gzip or plain IDX files).
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<Dataset, DatasetError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let file = |stem: &str| {
        let gz = dir.join(format!("{prefix}-{stem}.gz"));
        if gz.is_file() { gz } else { dir.join(format!("{prefix}-{stem}")) }
    };
    let images = read_idx_images(&file("images-idx3-ubyte"))?;
    let labels = read_idx_labels(&file("labels-idx1-ubyte"))?;
    if images.len() != labels.len() {
        return Err(DatasetError::CountMismatch { images: images.len(), labels: labels.len() });
    }
    Ok(Dataset { images, labels, classes: FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect() })
}
