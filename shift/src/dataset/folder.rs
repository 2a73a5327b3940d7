//! Labelled image folders, ImageNet style: `root/<class>/<image>` (classes sorted by name),
//! or a flat folder with a `labels.csv` of `file,class` lines.

use std::path::{Path, PathBuf};

use super::{Dataset, DatasetError};
use crate::corrupt::filters::resize_bilinear;
use crate::image::Image;

/// How images are brought to one size: resize the shorter side, then crop the centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderOptions {
    /// Target of the shorter side after resizing (ImageNet: 256).
    pub resize_shorter: u32,
    /// Side of the centre square kept (ImageNet: 224).
    pub center_crop: u32,
    /// Convert to grey (1 channel) instead of RGB.
    pub grey: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self { resize_shorter: 256, center_crop: 224, grey: false }
    }
}

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "ppm"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let io = |source| DatasetError::Io { path: dir.to_path_buf(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
    entries.sort();
    Ok(entries)
}

/// Loads a labelled image folder, resizing and cropping every image to one size.
pub fn load_folder(root: &Path, options: FolderOptions) -> Result<Dataset, DatasetError> {
    let layout = |reason: String| DatasetError::Layout { path: root.to_path_buf(), reason };
    if options.center_crop == 0 || options.center_crop > options.resize_shorter {
        return Err(layout(format!(
            "center crop {} must be positive and at most the resized side {}",
            options.center_crop, options.resize_shorter
        )));
    }
    let csv = root.join("labels.csv");
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    if csv.is_file() {
        let text = std::fs::read_to_string(&csv).map_err(|source| DatasetError::Io { path: csv.clone(), source })?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (file, class) = line.split_once(',').ok_or_else(|| DatasetError::Layout {
                path: csv.clone(),
                reason: format!("line {}: expected `file,class`", n + 1),
            })?;
            if n == 0 && file.trim() == "file" {
                continue; // header
            }
            files.push((root.join(file.trim()), class.trim().to_owned()));
        }
    } else {
        for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
            let class = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            for file in sorted_entries(&dir)?.into_iter().filter(|p| is_image(p)) {
                files.push((file, class.clone()));
            }
        }
    }
    if files.is_empty() {
        return Err(layout("no images found: expected class folders or a labels.csv".to_owned()));
    }
    let mut classes: Vec<String> = files.iter().map(|(_, c)| c.clone()).collect();
    classes.sort();
    classes.dedup();
    let mut images = Vec::with_capacity(files.len());
    let mut labels = Vec::with_capacity(files.len());
    for (path, class) in files {
        images.push(load_image(&path, options)?);
        labels.push(classes.binary_search(&class).unwrap_or_default() as u32);
    }
    Ok(Dataset { images, labels, classes })
}

/// Decodes one image and applies resize-shorter-side + centre-crop.
pub fn load_image(path: &Path, options: FolderOptions) -> Result<Image, DatasetError> {
    let decoded =
        image::open(path).map_err(|e| DatasetError::Image { path: path.to_path_buf(), reason: e.to_string() })?;
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let image = if options.grey {
        Image::new(width, height, 1, decoded.into_luma8().into_raw())
    } else {
        Image::new(width, height, 3, decoded.into_rgb8().into_raw())
    };
    let shorter = width.min(height) as f32;
    let scale = options.resize_shorter as f32 / shorter;
    let (new_w, new_h) =
        (((width as f32 * scale).round() as usize).max(1), ((height as f32 * scale).round() as usize).max(1));
    let resized = resize_bilinear(&image.to_plane(), new_w, new_h).to_image();
    let crop = options.center_crop as usize;
    let (top, left) = ((new_h - crop) / 2, (new_w - crop) / 2);
    let mut pixels = Vec::with_capacity(crop * crop * image.channels);
    for y in top..top + crop {
        let start = (y * new_w + left) * image.channels;
        pixels.extend_from_slice(&resized.pixels[start..start + crop * image.channels]);
    }
    Ok(Image::new(crop, crop, image.channels, pixels))
}
