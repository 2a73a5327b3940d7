//! Contact sheets: a grid of corrupted images, rows = corruptions, columns = clean then
//! severities 1–5, one block of columns per source image.

use crate::corrupt::Corruption;
use crate::image::Image;

/// Gap between cells, in output pixels.
const GAP: usize = 2;

/// Builds a contact sheet of `images` (all of one size), each cell scaled up by `zoom`.
/// Rows follow `corruptions`; for each image the columns are clean, severity 1, …, 5.
pub fn contact_sheet(images: &[Image], corruptions: &[Corruption], zoom: usize, seed: u64) -> Image {
    let (w, h) = (images[0].width * zoom, images[0].height * zoom);
    let columns = images.len() * 6;
    let width = columns * (w + GAP) + GAP;
    let height = corruptions.len() * (h + GAP) + GAP;
    let mut sheet = Image::new(width, height, 3, vec![255; width * height * 3]);
    for (row, &corruption) in corruptions.iter().enumerate() {
        for (i, image) in images.iter().enumerate() {
            for level in 0..6u8 {
                let cell = if level == 0 { image.clone() } else { corruption.apply(image, level, seed, i as u64) };
                let cell = cell.to_rgb();
                let x0 = GAP + (i * 6 + level as usize) * (w + GAP);
                let y0 = GAP + row * (h + GAP);
                for y in 0..h {
                    for x in 0..w {
                        let src = ((y / zoom) * cell.width + x / zoom) * 3;
                        let dst = ((y0 + y) * width + x0 + x) * 3;
                        sheet.pixels[dst..dst + 3].copy_from_slice(&cell.pixels[src..src + 3]);
                    }
                }
            }
        }
    }
    sheet
}
