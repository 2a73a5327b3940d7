//! Deterministic corruptions equal values computed from their formulas on hand-made inputs.

use cema_shift::{Corruption, Image};

fn grey(side: usize, f: impl Fn(usize, usize) -> u8) -> Image {
    Image::new(side, side, 1, (0..side * side).map(|i| f(i / side, i % side)).collect())
}

fn quantise(v: f64) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[test]
fn contrast_scales_around_the_mean() {
    let image = grey(28, |y, x| ((y * 7 + x * 3) % 256) as u8);
    let mean = image.pixels.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / 784.0;
    let out = Corruption::Contrast.apply(&image, 5, 0, 0); // CIFAR-10-C severity 5: c = 0.15
    for (o, p) in out.pixels.iter().zip(&image.pixels) {
        let expected = quantise((*p as f64 / 255.0 - mean) * 0.15 + mean);
        assert!(o.abs_diff(expected) <= 1, "{o} vs {expected}");
    }
}

#[test]
fn brightness_adds_to_value_in_hsv() {
    let image = grey(28, |y, x| (y * 9 + x) as u8);
    let out = Corruption::Brightness.apply(&image, 5, 0, 0); // Δ = 0.3
    for (o, p) in out.pixels.iter().zip(&image.pixels) {
        assert!(o.abs_diff(quantise(*p as f64 / 255.0 + 0.3)) <= 1);
    }
    // RGB: hue and saturation stay, so the channels scale with V.
    let rgb = Image::new(28, 28, 3, [200u8, 100, 50].repeat(784));
    let out = Corruption::Brightness.apply(&rgb, 1, 0, 0); // Δ = 0.05
    let v = 200.0 / 255.0;
    let scale = (v + 0.05) / v;
    let expected = [200.0, 100.0, 50.0].map(|c: f64| quantise(c / 255.0 * scale));
    assert_eq!(&out.pixels[..3], &expected);
}

#[test]
fn pixelate_averages_blocks_then_repeats_them() {
    // 128 px uses the ImageNet-C table; severity 2 keeps half the side: 2×2 blocks.
    let image = grey(128, |y, x| ((y * 31 + x * 17) % 251) as u8);
    let out = Corruption::Pixelate.apply(&image, 2, 0, 0);
    for by in 0..64 {
        for bx in 0..64 {
            let block: Vec<f64> = [(0, 0), (0, 1), (1, 0), (1, 1)]
                .iter()
                .map(|(dy, dx)| image.pixels[(2 * by + dy) * 128 + 2 * bx + dx] as f64)
                .collect();
            let expected = quantise(block.iter().sum::<f64>() / 4.0 / 255.0);
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let got = out.pixels[(2 * by + dy) * 128 + 2 * bx + dx];
                assert!(got.abs_diff(expected) <= 1, "block ({by},{bx}): {got} vs {expected}");
            }
        }
    }
}

#[test]
fn defocus_of_an_impulse_is_the_disk() {
    // Severity 4 of the small table: radius 1, anti-aliasing σ 0.2 (weights e^-12.5 ≈ 0 off-centre).
    let image = grey(28, |y, x| if (y, x) == (14, 14) { 255 } else { 0 });
    let out = Corruption::DefocusBlur.apply(&image, 4, 0, 0);
    for y in 0..28 {
        for x in 0..28 {
            let inside = (y as i32 - 14).pow(2) + (x as i32 - 14).pow(2) <= 1;
            let expected = if inside { 51 } else { 0 }; // 255 / 5 points of the radius-1 disk
            assert!(out.pixels[y * 28 + x].abs_diff(expected) <= 1, "({y},{x}) = {}", out.pixels[y * 28 + x]);
        }
    }
}

#[test]
fn gaussian_blur_of_an_impulse_is_the_gaussian() {
    let image = grey(28, |y, x| if (y, x) == (14, 14) { 255 } else { 0 });
    let out = Corruption::GaussianBlur.apply(&image, 5, 0, 0); // σ = 1, truncated at 4σ
    let weights: Vec<f64> = (-4..=4).map(|i: i32| (-(i * i) as f64 / 2.0).exp()).collect();
    let total: f64 = weights.iter().sum();
    for dy in -4..=4i32 {
        for dx in -4..=4i32 {
            let expected = quantise(weights[(dy + 4) as usize] * weights[(dx + 4) as usize] / total / total);
            let got = out.pixels[((14 + dy) * 28 + 14 + dx) as usize];
            assert!(got.abs_diff(expected) <= 1, "({dy},{dx}): {got} vs {expected}");
        }
    }
}

#[test]
fn zoom_blur_averages_centre_zooms() {
    // On a vertical ramp a centre zoom by z maps row y to c + (y − c)/z, so the average of the
    // copies is a ramp whose slope is the mean of 1/z over the copies (the original included).
    let image = grey(28, |y, _| (y * 9) as u8);
    let severity = 3;
    let factors = cema_shift::corrupt::Table::Small.zoom_blur(usize::from(severity) - 1);
    let slope = (1.0 + factors.iter().map(|z| 1.0 / *z as f64).sum::<f64>()) / (factors.len() + 1) as f64;
    let out = Corruption::ZoomBlur.apply(&image, severity, 0, 0);
    let column: Vec<f64> = (0..28).map(|y| out.pixels[y * 28 + 5] as f64).collect();
    // Away from the borders (where zoomed copies clamp) the measured slope matches.
    let measured = (column[20] - column[7]) / 13.0 / 9.0;
    assert!((measured - slope).abs() < 0.02, "slope {measured} vs {slope}");
    // Columns are identical: the ramp has no horizontal structure to blur.
    assert!((0..28).all(|y| out.pixels[y * 28] == out.pixels[y * 28 + 27]));
}
