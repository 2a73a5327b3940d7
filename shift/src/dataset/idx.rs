//! IDX files (LeCun's MNIST format), plain or gzip-compressed: big-endian u32 magic
//! (`0x00000803` images, `0x00000801` labels), big-endian u32 dims, then raw u8 data.

use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;

use super::DatasetError;
use crate::image::Image;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
/// Refuse headers declaring more than this many bytes (a corrupt header must not make us
/// allocate gigabytes).
const MAX_DATA_BYTES: usize = 1 << 31;

fn read_all(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let io = |source| DatasetError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, bytes: &[u8], kind: &'static str, magic: u32, dims: usize) -> Result<Vec<usize>, DatasetError> {
    let word = |i: usize| bytes.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let truncated = |expected| DatasetError::Truncated { path: path.to_path_buf(), expected, actual: bytes.len() };
    let found = word(0).ok_or_else(|| truncated(4))?;
    if found != magic {
        return Err(DatasetError::BadMagic { path: path.to_path_buf(), kind, expected: magic, found });
    }
    (1..=dims).map(|i| word(i).map(|d| d as usize).ok_or_else(|| truncated(4 * (dims + 1)))).collect()
}

fn body<'a>(path: &Path, bytes: &'a [u8], offset: usize, dims: &[usize]) -> Result<&'a [u8], DatasetError> {
    let expected =
        dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_DATA_BYTES).ok_or_else(
            || DatasetError::Truncated { path: path.to_path_buf(), expected: usize::MAX, actual: bytes.len() },
        )?;
    let data = &bytes[offset.min(bytes.len())..];
    if data.len() != expected {
        return Err(DatasetError::Truncated { path: path.to_path_buf(), expected, actual: data.len() });
    }
    Ok(data)
}

/// Reads an IDX image file (`count × rows × cols` grey images).
pub fn read_idx_images(path: &Path) -> Result<Vec<Image>, DatasetError> {
    let bytes = read_all(path)?;
    let dims = header(path, &bytes, "images", IMAGES_MAGIC, 3)?;
    let data = body(path, &bytes, 16, &dims)?;
    let (rows, cols) = (dims[1], dims[2]);
    Ok(data.chunks_exact(rows * cols).map(|c| Image::new(cols, rows, 1, c.to_vec())).collect())
}

/// Reads an IDX label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u32>, DatasetError> {
    let bytes = read_all(path)?;
    let dims = header(path, &bytes, "labels", LABELS_MAGIC, 1)?;
    Ok(body(path, &bytes, 8, &dims)?.iter().map(|&l| u32::from(l)).collect())
}

/// Writes grey images (all of one size) as an uncompressed IDX image file.
pub fn write_idx_images(path: &Path, images: &[Image]) -> std::io::Result<()> {
    let (rows, cols) = images.first().map_or((0, 0), |i| (i.height, i.width));
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for word in [IMAGES_MAGIC, images.len() as u32, rows as u32, cols as u32] {
        out.write_all(&word.to_be_bytes())?;
    }
    for image in images {
        let grey = if image.channels == 1 { image.pixels.clone() } else { image.to_plane().grey().to_image().pixels };
        out.write_all(&grey)?;
    }
    out.flush()
}

/// Writes labels as an uncompressed IDX label file.
pub fn write_idx_labels(path: &Path, labels: &[u32]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for word in [LABELS_MAGIC, labels.len() as u32] {
        out.write_all(&word.to_be_bytes())?;
    }
    out.write_all(&labels.iter().map(|&l| l as u8).collect::<Vec<_>>())?;
    out.flush()
}
