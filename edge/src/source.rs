//! The sources `cema-edge run` streams: a cema-shift scenario over the Fashion-MNIST test set,
//! IDX files, or a labelled image folder, preprocessed as the model's manifest says.

use std::path::Path;
use std::sync::OnceLock;

use cema_core::{Manifest, SampleValues};
use cema_shift::dataset::{Dataset, DatasetError, FolderOptions};
use cema_shift::{Corruption, Image, Scenario, ScenarioConfig, Split};

use crate::config::{EdgeConfig, SourceSpec};
use crate::serve::Source;

/// Why a source cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The data set or file cannot be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Labels do not match the images.
    #[error("{labels} labels for {images} images")]
    Labels {
        /// Labels read.
        labels: usize,
        /// Images read.
        images: usize,
    },
}

/// The Fashion-MNIST test set, loaded once per process: a scenario borrows it for as long as
/// it streams.
static TEST_SET: OnceLock<Dataset> = OnceLock::new();

/// Opens the source the settings name.
pub fn open(config: &EdgeConfig, manifest: &Manifest) -> Result<Source, SourceError> {
    let (images, labels) = match &config.source {
        SourceSpec::Scenario => return scenario(config),
        SourceSpec::Idx(path) => {
            let images = cema_shift::dataset::read_idx_images(path)?;
            let labels = config.labels.as_deref().map(cema_shift::dataset::read_idx_labels).transpose()?;
            (images, labels)
        }
        SourceSpec::Folder(path) => {
            let data = folder(path, manifest)?;
            (data.images, Some(data.labels))
        }
    };
    if let Some(labels) = &labels
        && labels.len() != images.len()
    {
        return Err(SourceError::Labels { labels: labels.len(), images: images.len() });
    }
    let len = images.len() as u64;
    Ok(Source {
        samples: Box::new(move |start, end| {
            (start as usize..(end as usize).min(images.len()))
                .map(|i| (i.to_string(), values(&images[i]), labels.as_ref().map(|l| l[i])))
                .collect()
        }),
        len,
    })
}

/// A scenario stream: ids `position:corruption:severity`.
fn scenario(config: &EdgeConfig) -> Result<Source, SourceError> {
    let data = match TEST_SET.get() {
        Some(data) => data,
        None => {
            let dir = cema_shift::dataset::fashion_mnist_dir()?;
            let loaded = cema_shift::dataset::load_fashion_mnist(&dir, Split::Test)?;
            TEST_SET.get_or_init(|| loaded)
        }
    };
    let corruptions = config.corruptions.as_ref().map_or_else(|| Corruption::BENCHMARK.to_vec(), |c| c.0.clone());
    let scenario = Scenario::new(
        data,
        ScenarioConfig {
            protocol: config.protocol.0,
            corruptions,
            severities: vec![config.severity],
            samples_per_segment: config.samples_per_segment,
            seed: config.seed,
            device: config.scenario_device,
        },
    );
    let len = scenario.len() as u64;
    Ok(Source {
        samples: Box::new(move |start, end| {
            scenario
                .batch(start, end)
                .into_iter()
                .map(|s| (format!("{}:{}:{}", s.position, s.corruption, s.severity), values(&s.image), Some(s.label)))
                .collect()
        }),
        len,
    })
}

/// A labelled folder, resized and cropped to the model's input as its manifest says.
fn folder(path: &Path, manifest: &Manifest) -> Result<Dataset, DatasetError> {
    let (h, _) = manifest.spatial();
    let options = FolderOptions {
        resize_shorter: manifest.preprocess.resize_shorter.unwrap_or(h as u32),
        center_crop: manifest.preprocess.center_crop.unwrap_or(h as u32),
        grey: manifest.channels() == 1,
    };
    cema_shift::dataset::load_folder(path, options)
}

fn values(image: &Image) -> SampleValues {
    SampleValues::U8(image.to_chw())
}
