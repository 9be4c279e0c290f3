//! Photos without a scene (a user's own images): the simulated models describe them
//! generically and the editor applies a visible edit of the requested kind to a region, so a
//! dry run over real files exercises decoding, sizes and throughput.

use crate::render::Pixels;

/// Regions a generic edit can touch.
pub const REGIONS: &[&str] = &[
    "central area",
    "left half",
    "right half",
    "top half",
    "bottom half",
    "whole image",
];

/// The sentence of a generic edit.
#[must_use]
pub fn sentence(label: &str, region: &str) -> String {
    format!("Apply a {label} change to the {region} of the photo.")
}

/// Parses a generic sentence into (label, region).
#[must_use]
pub fn parse(sentence: &str) -> Option<(String, String)> {
    let rest = sentence.trim().strip_prefix("Apply a ")?;
    let (label, rest) = rest.split_once(" change to the ")?;
    let region = rest.trim_end_matches('.').strip_suffix(" of the photo")?;
    REGIONS
        .contains(&region)
        .then(|| (label.to_string(), region.to_string()))
}

fn bounds(region: &str, w: u32, h: u32) -> (u32, u32, u32, u32) {
    match region {
        "central area" => (w / 4, h / 4, w - w / 4, h - h / 4),
        "left half" => (0, 0, w / 2, h),
        "right half" => (w / 2, 0, w, h),
        "top half" => (0, 0, w, h / 2),
        "bottom half" => (0, h / 2, w, h),
        _ => (0, 0, w, h),
    }
}

/// Applies a generic edit in place: a visible, label-specific pixel change in the region.
pub fn apply(pixels: &mut Pixels, label: &str, region: &str) {
    let (x0, y0, x1, y1) = bounds(region, pixels.width, pixels.height);
    for y in y0..y1 {
        for x in x0..x1 {
            let [r, g, b] = pixels.get(x, y);
            let out = match label {
                "color" | "replace" => [b, r, g],
                "material" | "texture" => {
                    if (x / 4 + y / 4) % 2 == 0 {
                        [r / 2, g / 2, b / 2]
                    } else {
                        [r, g, b]
                    }
                }
                "shape" | "addition" | "count" => {
                    let (cx, cy) = (f64::from(x0 + x1) / 2.0, f64::from(y0 + y1) / 2.0);
                    let radius = f64::from((x1 - x0).min(y1 - y0)) / 3.0;
                    if (f64::from(x) - cx).hypot(f64::from(y) - cy) < radius {
                        [230, 40, 40]
                    } else {
                        [r, g, b]
                    }
                }
                "remove" => [128, 128, 128],
                "time" => [r / 3, g / 3, b / 2 + 40],
                "weather" => [r / 2 + 110, g / 2 + 110, b / 2 + 115],
                "style" => {
                    let l = u8::try_from((u16::from(r) + u16::from(g) + u16::from(b)) / 3)
                        .unwrap_or(u8::MAX);
                    [l, l, l]
                }
                _ => [255 - r, 255 - g, 255 - b],
            };
            pixels.set(x, y, out);
        }
    }
    if matches!(label, "viewpoint" | "spatial" | "action") {
        for y in y0..y1 {
            for x in x0..(x0 + (x1 - x0) / 2) {
                let mirror = x1 - 1 - (x - x0);
                let (a, b) = (pixels.get(x, y), pixels.get(mirror, y));
                pixels.set(x, y, b);
                pixels.set(mirror, y, a);
            }
        }
    }
}
