//! Rendering: a scene becomes RGB pixels. Pure and deterministic; an object only touches the
//! pixels inside its bounding box (plus the style filters' one-pixel reach).

use crate::scene::{
    Background, Color, Figure, Kind, Material, Object, Pose, Scene, Shape, Style, Texture,
    TimeOfDay, Weather,
};

/// An RGB image, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl Pixels {
    /// A blank image.
    #[must_use]
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize * 3],
        }
    }

    fn index(&self, x: u32, y: u32) -> usize {
        (y as usize * self.width as usize + x as usize) * 3
    }

    /// The pixel at (x, y).
    #[must_use]
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = self.index(x, y);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Sets the pixel at (x, y).
    pub fn set(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = self.index(x, y);
        self.data[i..i + 3].copy_from_slice(&rgb);
    }
}

/// The bounding box of an object in scene pixels: (x0, y0, x1, y1), inclusive-exclusive.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "pixel coordinates"
)]
pub fn object_box(scene: &Scene, object: &Object) -> (u32, u32, u32, u32) {
    let (w, h) = (scene.width as f32, scene.height as f32);
    let r = object.size * w.min(h);
    let (cx, cy) = (object.x * w, object.y * h);
    let x0 = (cx - r - 1.0).floor().max(0.0) as u32;
    let y0 = (cy - r - 1.0).floor().max(0.0) as u32;
    let x1 = ((cx + r + 2.0).ceil() as u32).min(scene.width);
    let y1 = ((cy + r + 2.0).ceil() as u32).min(scene.height);
    (x0, y0, x1, y1)
}

/// The bounding box of the person in scene pixels.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "pixel coordinates"
)]
pub fn figure_box(scene: &Scene, figure: &Figure) -> (u32, u32, u32, u32) {
    let (w, h) = (scene.width as f32, scene.height as f32);
    let unit = w.min(h) * 0.05;
    let (fx, fy) = (figure.x * w, figure.y * h);
    let x0 = (fx - 3.0 * unit - 2.0).max(0.0) as u32;
    let y0 = (fy - 7.5 * unit - 2.0).max(0.0) as u32;
    let x1 = ((fx + 3.0 * unit + 3.0) as u32).min(scene.width);
    let y1 = ((fy + 1.0 * unit + 3.0) as u32).min(scene.height);
    (x0, y0, x1, y1)
}

/// Renders a scene.
#[must_use]
pub fn render(scene: &Scene) -> Pixels {
    let mut px = background(scene.background, scene.width.max(1), scene.height.max(1));
    for object in &scene.objects {
        draw_object(&mut px, scene, object);
    }
    if let Some(figure) = &scene.figure {
        draw_figure(&mut px, scene, figure);
    }
    apply_weather(&mut px, scene.weather);
    apply_time(&mut px, scene.time);
    let px = apply_view(&px, scene.mirrored, scene.zoom);
    apply_style(px, scene.style)
}

/// Backgrounds already drawn, by (kind, width, height): every edit of a scene redraws the
/// same one, pixel by pixel. Bounded: cleared when it holds more than this many, and only
/// small pictures (where drawing is a real share of an edit's cost) are kept: 12 MB at most.
const BACKGROUNDS_KEPT: usize = 64;
const BACKGROUND_KEPT_PIXELS: u64 = 256 * 256;

/// Drawn backgrounds' pixels by (kind, width, height).
type Drawn = std::collections::HashMap<(Background, u32, u32), Vec<u8>>;
static DRAWN: std::sync::Mutex<Option<Drawn>> = std::sync::Mutex::new(None);

/// The background of this kind and size, drawn once (for small pictures).
fn background(kind: Background, width: u32, height: u32) -> Pixels {
    if u64::from(width) * u64::from(height) > BACKGROUND_KEPT_PIXELS {
        let mut px = Pixels::new(width, height);
        draw_background(&mut px, kind);
        return px;
    }
    let key = (kind, width, height);
    let cached = DRAWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .and_then(|drawn| drawn.get(&key).cloned());
    if let Some(data) = cached {
        return Pixels {
            width,
            height,
            data,
        };
    }
    let mut px = Pixels::new(width, height);
    draw_background(&mut px, kind);
    let mut drawn = DRAWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let drawn = drawn.get_or_insert_with(Drawn::new);
    if drawn.len() >= BACKGROUNDS_KEPT {
        drawn.clear();
    }
    drawn.insert(key, px.data.clone());
    px
}

fn rgb(color: Color) -> [u8; 3] {
    match color {
        Color::Red => [210, 40, 40],
        Color::Orange => [240, 140, 30],
        Color::Yellow => [240, 220, 40],
        Color::Green => [40, 170, 60],
        Color::Blue => [40, 80, 210],
        Color::Purple => [130, 50, 170],
        Color::Pink => [240, 130, 180],
        Color::White => [245, 245, 245],
        Color::Black => [25, 25, 25],
        Color::Brown => [120, 75, 40],
    }
}

#[expect(clippy::cast_precision_loss, reason = "pixel coordinates")]
fn draw_background(px: &mut Pixels, background: Background) {
    let (sky, ground) = match background {
        Background::Meadow => ([150, 200, 240], [110, 170, 90]),
        Background::Beach => ([160, 210, 245], [225, 205, 150]),
        Background::Street => ([170, 185, 200], [120, 120, 125]),
        Background::Room => ([225, 215, 195], [170, 140, 110]),
    };
    // Light falls from the left (darker to the right) and the sun stands at the top right, so
    // the scene is not symmetric and a mirrored view is visibly different.
    let horizon = px.height * 2 / 5;
    let (w, h) = (px.width as f32, px.height as f32);
    let (sun_x, sun_y, sun_r) = (0.85 * w, 0.14 * h, 0.06 * w.min(h));
    for y in 0..px.height {
        for x in 0..px.width {
            let shade = 1.08 - 0.22 * (x as f32 / w);
            let base = if y < horizon { sky } else { ground };
            let mut color = scale(base, shade);
            if y < horizon
                && (x as f32 - sun_x).powi(2) + (y as f32 - sun_y).powi(2) < sun_r * sun_r
            {
                color = [250, 230, 120];
            }
            px.set(x, y, color);
        }
    }
}

fn inside(shape: Shape, dx: f32, dy: f32, r: f32) -> bool {
    match shape {
        Shape::Round => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= r * 0.9 && dy.abs() <= r * 0.9,
        Shape::Triangular => dy >= -r && dy <= r * 0.9 && dx.abs() <= (dy + r) * 0.5,
        Shape::Diamond => dx.abs() + dy.abs() <= r,
    }
}

/// A 3x3 emblem per kind, drawn in the middle of the object.
fn emblem(kind: Kind) -> [u8; 9] {
    match kind {
        Kind::Ball => [0, 1, 0, 1, 1, 1, 0, 1, 0],
        Kind::Box => [1, 1, 1, 1, 0, 1, 1, 1, 1],
        Kind::Cup => [1, 0, 1, 1, 0, 1, 1, 1, 1],
        Kind::Tree => [0, 1, 0, 1, 1, 1, 0, 1, 0].map(|v: u8| v ^ 1),
        Kind::Car => [0, 0, 0, 1, 1, 1, 1, 0, 1],
        Kind::House => [0, 1, 0, 1, 0, 1, 1, 1, 1],
        Kind::Lamp => [1, 1, 1, 0, 1, 0, 0, 1, 0],
        Kind::Book => [1, 1, 0, 1, 1, 0, 1, 1, 0],
    }
}

fn scale(c: [u8; 3], f: f32) -> [u8; 3] {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to 0..=255"
    )]
    c.map(|v| (f32::from(v) * f).clamp(0.0, 255.0) as u8)
}

fn mix(a: [u8; 3], b: [u8; 3], t: f32) -> [u8; 3] {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "clamped to 0..=255"
    )]
    let m = |x: u8, y: u8| (f32::from(x) * (1.0 - t) + f32::from(y) * t).clamp(0.0, 255.0) as u8;
    [m(a[0], b[0]), m(a[1], b[1]), m(a[2], b[2])]
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    clippy::many_single_char_names,
    reason = "pixel coordinates"
)]
fn draw_object(px: &mut Pixels, scene: &Scene, object: &Object) {
    let (w, h) = (scene.width as f32, scene.height as f32);
    let r = (object.size * w.min(h)).max(2.0);
    let (cx, cy) = (object.x * w, object.y * h);
    let (x0, y0, x1, y1) = object_box(scene, object);
    let base = rgb(object.color);
    let glyph = emblem(object.kind);
    let contrast = if base.iter().map(|&v| u32::from(v)).sum::<u32>() > 380 {
        [20, 20, 20]
    } else {
        [250, 250, 250]
    };
    for y in y0..y1 {
        for x in x0..x1 {
            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            if !inside(object.shape, dx, dy, r) {
                continue;
            }
            let (u, v) = (dx / r, dy / r); // -1..1
            let mut color = match object.material {
                Material::Matte => base,
                Material::Metal => {
                    let shine = 1.25 - 0.45 * (v + 1.0) / 2.0;
                    let highlight = (u + 0.4).powi(2) + (v + 0.4).powi(2) < 0.05;
                    if highlight {
                        [255, 255, 255]
                    } else {
                        scale(base, shine)
                    }
                }
                Material::Glass => mix(px.get(x, y), base, 0.45),
                Material::Wood => {
                    let grain = f32::midpoint((v * 9.0 + (u * 3.0).sin()).sin(), 1.0);
                    scale(mix(base, [120, 75, 40], 0.35), 0.75 + 0.3 * grain)
                }
            };
            let stripe = r / 4.0;
            color = match object.texture {
                Texture::Plain => color,
                Texture::Striped => {
                    if ((dx + dy) / stripe).floor() as i64 % 2 == 0 {
                        scale(color, 0.55)
                    } else {
                        color
                    }
                }
                Texture::Dotted => {
                    let (gx, gy) = (
                        (dx / stripe).rem_euclid(2.0) - 1.0,
                        (dy / stripe).rem_euclid(2.0) - 1.0,
                    );
                    if gx * gx + gy * gy < 0.3 {
                        mix(color, contrast, 0.7)
                    } else {
                        color
                    }
                }
                Texture::Checkered => {
                    let parity = (dx / stripe).floor() as i64 + (dy / stripe).floor() as i64;
                    if parity.rem_euclid(2) == 0 {
                        scale(color, 0.6)
                    } else {
                        color
                    }
                }
            };
            // The emblem: a 3x3 glyph in the central third says what the object is.
            if u.abs() < 0.36 && v.abs() < 0.36 {
                let (gx, gy) = (((u + 0.36) / 0.24) as usize, ((v + 0.36) / 0.24) as usize);
                if glyph[gy.min(2) * 3 + gx.min(2)] == 1 {
                    color = contrast;
                }
            }
            px.set(x, y, color);
        }
    }
}

#[expect(clippy::cast_precision_loss, reason = "pixel coordinates")]
fn draw_figure(px: &mut Pixels, scene: &Scene, figure: &Figure) {
    let (w, h) = (scene.width as f32, scene.height as f32);
    let unit = w.min(h) * 0.05;
    let (fx, fy) = (figure.x * w, figure.y * h);
    let thick = (unit * 0.25).max(1.0);
    let skin = [235, 190, 150];
    let shirt = rgb(figure.color);
    let dark = [40, 40, 40];
    let hip = if figure.pose == Pose::Sitting {
        (fx, fy - 2.0 * unit)
    } else {
        (fx, fy - 3.0 * unit)
    };
    let neck = (hip.0, hip.1 - 3.0 * unit);
    let mut lines: Vec<Segment> = vec![(hip, neck, shirt)];
    let (left_hand, right_hand) = match figure.pose {
        Pose::ArmsUp => (
            (neck.0 - 1.5 * unit, neck.1 - 2.0 * unit),
            (neck.0 + 1.5 * unit, neck.1 - 2.0 * unit),
        ),
        Pose::Running => (
            (neck.0 - 2.0 * unit, neck.1 + 0.5 * unit),
            (neck.0 + 1.8 * unit, neck.1 - 0.8 * unit),
        ),
        _ => (
            (neck.0 - 1.2 * unit, neck.1 + 2.2 * unit),
            (neck.0 + 1.2 * unit, neck.1 + 2.2 * unit),
        ),
    };
    let arm = (neck.0, neck.1 + 0.5 * unit);
    lines.push((arm, left_hand, skin));
    lines.push((arm, right_hand, skin));
    let (left_foot, right_foot) = match figure.pose {
        Pose::Sitting => (
            (hip.0 + 2.0 * unit, hip.1),
            (hip.0 + 2.0 * unit, hip.1 + 2.0 * unit),
        ),
        Pose::Running => (
            (hip.0 - 2.2 * unit, fy - 0.5 * unit),
            (hip.0 + 2.0 * unit, fy),
        ),
        _ => ((hip.0 - unit, fy), (hip.0 + unit, fy)),
    };
    lines.push((hip, left_foot, dark));
    lines.push((hip, right_foot, dark));
    if figure.pose == Pose::Sitting {
        // The chair.
        lines.push((
            (hip.0 - unit, hip.1 + 0.3 * unit),
            (hip.0 + 2.2 * unit, hip.1 + 0.3 * unit),
            [120, 75, 40],
        ));
    }
    let (x0, y0, x1, y1) = figure_box(scene, figure);
    for y in y0..y1 {
        for x in x0..x1 {
            let p = (x as f32 + 0.5, y as f32 + 0.5);
            let head = (neck.0, neck.1 - 0.9 * unit);
            if (p.0 - head.0).powi(2) + (p.1 - head.1).powi(2) <= (0.8 * unit).powi(2) {
                px.set(x, y, skin);
                continue;
            }
            for (a, b, color) in &lines {
                if segment_distance(p, *a, *b) <= thick {
                    px.set(x, y, *color);
                }
            }
        }
    }
}

/// A line of the stick figure: from, to, colour.
type Segment = ((f32, f32), (f32, f32), [u8; 3]);

fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let len = vx * vx + vy * vy;
    let t = if len == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * vx + (p.1 - a.1) * vy) / len).clamp(0.0, 1.0)
    };
    let (qx, qy) = (a.0 + t * vx, a.1 + t * vy);
    ((p.0 - qx).powi(2) + (p.1 - qy).powi(2)).sqrt()
}

/// A per-pixel hash, so weather overlays are deterministic and independent of objects.
fn hash(x: u32, y: u32) -> u32 {
    let mut h = x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77);
    h ^= h >> 15;
    h = h.wrapping_mul(0xC2B2_AE3D);
    h ^ (h >> 13)
}

fn apply_weather(px: &mut Pixels, weather: Weather) {
    if weather == Weather::Clear {
        return;
    }
    for y in 0..px.height {
        for x in 0..px.width {
            let c = px.get(x, y);
            let out = match weather {
                Weather::Clear => c,
                Weather::Rain => {
                    let streak = (x + y / 3).is_multiple_of(11)
                        && !(y / 5 + hash(x / 11, 0)).is_multiple_of(4);
                    let c = scale(c, 0.8);
                    if streak {
                        mix(c, [200, 210, 230], 0.7)
                    } else {
                        c
                    }
                }
                Weather::Snow => {
                    if hash(x / 2, y / 2).is_multiple_of(37) {
                        [250, 250, 250]
                    } else {
                        mix(c, [235, 240, 245], 0.25)
                    }
                }
                Weather::Fog => mix(c, [215, 215, 220], 0.55),
            };
            px.set(x, y, out);
        }
    }
}

fn apply_time(px: &mut Pixels, time: TimeOfDay) {
    let factors = match time {
        TimeOfDay::Day => return,
        TimeOfDay::Sunset => [1.1, 0.75, 0.55],
        TimeOfDay::Night => [0.3, 0.32, 0.5],
    };
    for chunk in px.data.chunks_exact_mut(3) {
        for (v, f) in chunk.iter_mut().zip(factors) {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "clamped to 0..=255"
            )]
            let scaled = (f32::from(*v) * f).clamp(0.0, 255.0) as u8;
            *v = scaled;
        }
    }
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "pixel coordinates"
)]
fn apply_view(px: &Pixels, mirrored: bool, zoom: f32) -> Pixels {
    if !mirrored && (zoom - 1.0).abs() < f32::EPSILON {
        return px.clone();
    }
    let mut out = Pixels::new(px.width, px.height);
    let (cx, cy) = (px.width as f32 / 2.0, px.height as f32 / 2.0);
    for y in 0..px.height {
        for x in 0..px.width {
            let mut sx = cx + (x as f32 + 0.5 - cx) / zoom;
            let sy = cy + (y as f32 + 0.5 - cy) / zoom;
            if mirrored {
                sx = px.width as f32 - sx;
            }
            let sx = (sx.max(0.0) as u32).min(px.width - 1);
            let sy = (sy.max(0.0) as u32).min(px.height - 1);
            out.set(x, y, px.get(sx, sy));
        }
    }
    out
}

fn luma(c: [u8; 3]) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to 0..=255"
)]
fn apply_style(px: Pixels, style: Style) -> Pixels {
    if style == Style::Photo {
        return px;
    }
    let mut out = Pixels::new(px.width, px.height);
    let at = |x: i64, y: i64| {
        let x = x.clamp(0, i64::from(px.width) - 1) as u32;
        let y = y.clamp(0, i64::from(px.height) - 1) as u32;
        px.get(x, y)
    };
    for y in 0..px.height {
        for x in 0..px.width {
            let (xi, yi) = (i64::from(x), i64::from(y));
            let c = px.get(x, y);
            let edge = (luma(at(xi + 1, yi)) - luma(at(xi - 1, yi))).abs()
                + (luma(at(xi, yi + 1)) - luma(at(xi, yi - 1))).abs();
            let value = match style {
                Style::Photo => c,
                Style::Sketch => {
                    let g = (245.0 - edge * 2.5).clamp(30.0, 245.0) as u8;
                    [g, g, g.saturating_sub(8)]
                }
                Style::Cartoon => {
                    let poster = c.map(|v| (v / 64) * 64 + 32);
                    if edge > 60.0 { [15, 15, 15] } else { poster }
                }
                Style::Watercolor => {
                    let mut sum = [0u32; 3];
                    for (ox, oy) in [
                        (-1, -1),
                        (0, -1),
                        (1, -1),
                        (-1, 0),
                        (0, 0),
                        (1, 0),
                        (-1, 1),
                        (0, 1),
                        (1, 1),
                    ] {
                        let n = at(xi + ox, yi + oy);
                        for k in 0..3 {
                            sum[k] += u32::from(n[k]);
                        }
                    }
                    let blurred = sum.map(|s| (s / 9) as u8);
                    mix(blurred, [250, 245, 235], 0.3)
                }
            };
            out.set(x, y, value);
        }
    }
    out
}
