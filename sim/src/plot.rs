//! Line charts as PNG, drawn directly (no font or plotting dependency): panels stacked
//! vertically, each with axes, ticks, a title and a legend, text from a built-in 5×7 font.

use std::path::Path;

/// One line of a panel.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
}

/// One panel.
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Y range.
    pub y_range: (f64, f64),
    /// Lines.
    pub series: Vec<Series>,
}

const W: u32 = 900;
const PANEL_H: u32 = 260;
const LEFT: u32 = 60;
const RIGHT: u32 = 20;
const TOP: u32 = 28;
const BOTTOM: u32 = 36;
const COLOURS: [[u8; 3]; 6] =
    [[90, 90, 90], [214, 39, 40], [31, 119, 180], [44, 160, 44], [255, 127, 14], [148, 103, 189]];

struct Canvas {
    img: image::RgbImage,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, image::Rgb(c));
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.put(x, y, c);
            if thick {
                self.put(x, y + 1, c);
                self.put(x + 1, y, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, text: &str, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.put(x + i as i64 * 6 + col, y + row as i64, c);
                    }
                }
            }
        }
    }
}

/// Writes the panels to a PNG at `path`; `x_label` names the shared x axis.
pub fn write(path: &Path, panels: &[Panel], x_label: &str) -> Result<(), PlotError> {
    let height = PANEL_H * panels.len() as u32;
    let mut canvas = Canvas { img: image::RgbImage::from_pixel(W, height, image::Rgb([255, 255, 255])) };
    let x_max = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter().map(|(x, _)| *x)))
        .fold(1.0f64, f64::max);
    for (k, panel) in panels.iter().enumerate() {
        let top = (k as u32 * PANEL_H + TOP) as i64;
        let bottom = ((k as u32 + 1) * PANEL_H - BOTTOM) as i64;
        let (left, right) = (LEFT as i64, (W - RIGHT) as i64);
        let black = [0, 0, 0];
        let grey = [225, 225, 225];
        canvas.text(left, top - 18, &panel.title, black);
        let (y0, y1) = panel.y_range;
        let to_px = |x: f64, y: f64| {
            let px = left + ((x / x_max) * (right - left) as f64).round() as i64;
            let py = bottom - (((y - y0) / (y1 - y0)).clamp(0.0, 1.0) * (bottom - top) as f64).round() as i64;
            (px, py)
        };
        for i in 0..=4 {
            let y = y0 + (y1 - y0) * i as f64 / 4.0;
            let (_, py) = to_px(0.0, y);
            canvas.line((left, py), (right, py), grey, false);
            canvas.text(4, py - 3, &format!("{:>6.2}", y), black);
        }
        for i in 0..=5 {
            let x = x_max * i as f64 / 5.0;
            let (px, _) = to_px(x, y0);
            canvas.line((px, bottom), (px, bottom + 4), black, false);
            let label = format!("{}", x.round() as i64);
            canvas.text(px - 3 * label.len() as i64, bottom + 8, &label, black);
        }
        canvas.line((left, top), (left, bottom), black, false);
        canvas.line((left, bottom), (right, bottom), black, false);
        canvas.text(right - 6 * x_label.len() as i64, bottom + 20, x_label, black);
        for (i, series) in panel.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<(i64, i64)> = series.points.iter().map(|&(x, y)| to_px(x, y)).collect();
            for pair in points.windows(2) {
                canvas.line(pair[0], pair[1], colour, true);
            }
            let ly = top + 4 + 11 * i as i64;
            canvas.line((right - 190, ly + 3), (right - 172, ly + 3), colour, true);
            canvas.text(right - 166, ly, &series.label, colour);
        }
    }
    canvas.img.save(path).map_err(|source| PlotError { path: path.to_owned(), source })
}

/// A plot that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", path.display())]
pub struct PlotError {
    /// The PNG file.
    pub path: std::path::PathBuf,
    /// The encoder's or the file system's error.
    pub source: image::ImageError,
}

/// Rows of a 5×7 glyph (bit 4 = leftmost column). Unknown characters draw as a box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_lowercase() {
        ' ' => [0; 7],
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        'a' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'b' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        'c' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'd' => [0x1c, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1c],
        'e' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'f' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        'g' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'h' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'i' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'j' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c],
        'k' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'l' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'm' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'n' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'o' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'p' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'q' => [0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d],
        'r' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        's' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        't' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'u' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'v' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'w' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        'x' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        'y' => [0x11, 0x11, 0x11, 0x0a, 0x04, 0x04, 0x04],
        'z' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f],
        '.' => [0, 0, 0, 0, 0, 0x0c, 0x0c],
        ',' => [0, 0, 0, 0, 0x0c, 0x04, 0x08],
        ':' => [0, 0x0c, 0x0c, 0, 0x0c, 0x0c, 0],
        '-' => [0, 0, 0, 0x1f, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1f],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '=' => [0, 0, 0x1f, 0, 0x1f, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1f, 0x04, 0x04, 0],
        _ => [0x1f, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1f],
    }
}
