//! `recall_at_1.png`: a horizontal bar chart of Recall@1 per subcategory, one bar per model,
//! with the overall figure on top. Drawn pixel by pixel with a built-in 5x7 font (upper case,
//! digits and a little punctuation), so it needs no plotting or font library.

use image::{Rgb, RgbImage};

use crate::metrics::ModelResult;

/// Bar colours, one per model (cycled).
const COLOURS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
];
const INK: Rgb<u8> = Rgb([40, 40, 40]);
const GRID: Rgb<u8> = Rgb([220, 220, 220]);
/// Pixels per font dot.
const SCALE: u32 = 2;
const BAR: u32 = 14;
const LABELS: u32 = 300;
const PLOT: u32 = 560;

/// The 5x7 glyph of `c` (rows top to bottom, bit 4 = left column); `None` draws a box.
fn glyph(c: char) -> Option<[u8; 7]> {
    Some(match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [30, 17, 17, 17, 17, 17, 30],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 10, 4, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '@' => [14, 17, 23, 21, 23, 16, 14],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        _ => return None,
    })
}

/// Width in pixels of `text` drawn at `SCALE`.
fn text_width(text: &str) -> u32 {
    u32::try_from(text.chars().count()).unwrap_or(0) * 6 * SCALE
}

fn put(img: &mut RgbImage, x: u32, y: u32, colour: Rgb<u8>) {
    if x < img.width() && y < img.height() {
        img.put_pixel(x, y, colour);
    }
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    for dy in 0..h {
        for dx in 0..w {
            put(img, x + dx, y + dy, colour);
        }
    }
}

fn draw_text(img: &mut RgbImage, mut x: u32, y: u32, text: &str, colour: Rgb<u8>) {
    for c in text.chars() {
        let rows = glyph(c).unwrap_or([31, 17, 17, 17, 17, 17, 31]);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (1 << (4 - col)) != 0 {
                    let row = u32::try_from(r).unwrap_or(0);
                    fill(img, x + col * SCALE, y + row * SCALE, SCALE, SCALE, colour);
                }
            }
        }
        x += 6 * SCALE;
    }
}

/// Cuts `text` to fit `width` pixels.
fn fit(text: &str, width: u32) -> String {
    let max = usize::try_from(width / (6 * SCALE)).unwrap_or(0);
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(2)).collect();
    cut.push_str("..");
    cut
}

/// The chart of `results` (Recall@1 overall and per subcategory, one bar per model).
#[must_use]
pub(crate) fn recall_chart(results: &[&ModelResult]) -> RgbImage {
    let mut groups: Vec<String> = vec!["overall".to_string()];
    if let Some(first) = results.first() {
        groups.extend(first.by_subcategory.keys().cloned());
    }
    let models = u32::try_from(results.len().max(1)).unwrap_or(1);
    let group_h = models * BAR + 10;
    let legend_h = models * (7 * SCALE + 8) + 16;
    let top = 40 + legend_h;
    let rows = u32::try_from(groups.len()).unwrap_or(0);
    let (width, height) = (LABELS + PLOT + 80, top + rows * group_h + 40);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    draw_text(&mut img, 10, 10, "RECALL@1 PER SUBCATEGORY", INK);
    for (i, result) in results.iter().enumerate() {
        let y = 40 + u32::try_from(i).unwrap_or(0) * (7 * SCALE + 8);
        let colour = Rgb(COLOURS[i % COLOURS.len()]);
        fill(&mut img, 10, y, 14, 7 * SCALE, colour);
        let label = format!(
            "{}  (R@1 {:.3})",
            result.model,
            result
                .overall
                .recall
                .get("recall@1")
                .copied()
                .unwrap_or(0.0)
        );
        draw_text(&mut img, 32, y, &fit(&label, width - 40), INK);
    }
    let x0 = LABELS;
    // Grid and axis labels at 0, 0.25, ..., 1.
    for step in 0..=4u32 {
        let x = x0 + PLOT * step / 4;
        fill(&mut img, x, top - 6, 1, rows * group_h + 6, GRID);
        let label = format!("{:.2}", f64::from(step) / 4.0);
        let lx = x.saturating_sub(text_width(&label) / 2);
        draw_text(&mut img, lx, top + rows * group_h + 8, &label, INK);
    }
    for (g, name) in groups.iter().enumerate() {
        let y = top + u32::try_from(g).unwrap_or(0) * group_h;
        let label = fit(name, LABELS - 20);
        draw_text(
            &mut img,
            LABELS - 10 - text_width(&label),
            y + (models * BAR).saturating_sub(7 * SCALE) / 2,
            &label,
            INK,
        );
        for (m, result) in results.iter().enumerate() {
            let group = if g == 0 {
                Some(&result.overall)
            } else {
                result.by_subcategory.get(name)
            };
            let value = group
                .and_then(|g| g.recall.get("recall@1"))
                .copied()
                .unwrap_or(0.0)
                .clamp(0.0, 1.0);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a fraction of the plot width"
            )]
            let w = (value * f64::from(PLOT)).round() as u32;
            let by = y + u32::try_from(m).unwrap_or(0) * BAR;
            fill(
                &mut img,
                x0,
                by,
                w.max(1),
                BAR - 2,
                Rgb(COLOURS[m % COLOURS.len()]),
            );
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::Group;

    fn result(model: &str, overall: f64, per: &[(&str, f64)]) -> ModelResult {
        let group = |r: f64| Group {
            queries: 10,
            recall: BTreeMap::from([("recall@1".to_string(), r)]),
        };
        ModelResult {
            model: model.to_string(),
            queries: 10,
            corpus: 100,
            overall: group(overall),
            by_category: BTreeMap::new(),
            by_subcategory: per
                .iter()
                .map(|(k, v)| ((*k).to_string(), group(*v)))
                .collect(),
            ties: 0,
        }
    }

    #[test]
    fn bars_are_as_long_as_the_recall() {
        let a = result("model-a", 0.5, &[("color", 1.0), ("shape", 0.0)]);
        let b = result("model-b", 0.25, &[("color", 0.5), ("shape", 0.75)]);
        let img = recall_chart(&[&a, &b]);
        let colour_a = Rgb(COLOURS[0]);
        // The length of a bar: coloured pixels along its middle row.
        let bar_len = |group: u32, model: u32, colour: Rgb<u8>| {
            let legend_h = 2 * (7 * SCALE + 8) + 16;
            let y = 40 + legend_h + group * (2 * BAR + 10) + model * BAR + BAR / 2;
            (LABELS..=LABELS + PLOT)
                .filter(|x| *img.get_pixel(*x, y) == colour)
                .count()
        };
        assert_eq!(bar_len(0, 0, colour_a), 280, "overall 0.5 of 560 px");
        assert_eq!(bar_len(1, 0, colour_a), 560, "color 1.0");
        assert_eq!(bar_len(2, 0, colour_a), 1, "shape 0.0: a hairline");
        assert_eq!(
            bar_len(2, 1, Rgb(COLOURS[1])),
            420,
            "shape 0.75 for model b"
        );
        // Every character used in labels has a glyph.
        for c in "recall@1 per subcategory model-a (r@1 0.500) 0.25".chars() {
            assert!(glyph(c).is_some(), "{c}");
        }
    }
}
