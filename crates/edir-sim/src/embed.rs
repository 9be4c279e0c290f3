//! Simulated embedding models: deterministic, L2-normalised feature hashing of what an image
//! shows (its scene) and what a text asks for, with per-model noise. Two strengths:
//!
//! - `image`-style models embed a query by its reference image alone and ignore the text, as
//!   a non-MLLM baseline does: they find images like the reference, not the modification.
//! - `compose`-style models read the modification text (colour, material, pattern, shape,
//!   object, weather, time, style words, "without") and move the reference's features
//!   accordingly; they do not understand counts, positions or viewpoint, so those
//!   subcategories stay hard, as EDIR reports for real models.

use std::fmt::Write as _;

use crate::rng::Rng;
use crate::scene::{
    Color, Kind, Material, Scene, Shape, Style, Texture, TimeOfDay, Weather, nearest_anchor,
};

/// How a simulated embedding model reads a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedStyle {
    /// Sees the image, ignores the text.
    Image,
    /// Applies the text's words to the image's features.
    Compose,
}

/// One feature with a weight.
type Feature = (String, f32);

fn scene_features(scene: &Scene) -> Vec<Feature> {
    let mut out = Vec::new();
    for o in &scene.objects {
        let k = o.kind.word();
        out.push((format!("obj:{k}"), 1.0));
        out.push((format!("color:{k}:{}", o.color.word()), 1.0));
        out.push((format!("material:{k}:{}", o.material.word()), 0.8));
        out.push((format!("texture:{k}:{}", o.texture.word()), 0.8));
        out.push((format!("shape:{k}:{}", o.shape.word()), 0.7));
        out.push((format!("place:{k}:{}", nearest_anchor(o.x, o.y)), 0.5));
    }
    for kind in Kind::ALL {
        let n = scene.count(*kind);
        if n > 0 {
            out.push((format!("count:{}:{n}", kind.word()), 0.6));
        }
    }
    if let Some(f) = &scene.figure {
        out.push(("person".into(), 0.8));
        out.push((format!("pose:{}", f.pose.word()), 0.7));
    }
    out.push((format!("background:{}", scene.background.word()), 0.8));
    out.push((format!("time:{}", scene.time.word()), 1.0));
    out.push((format!("weather:{}", scene.weather.word()), 1.0));
    out.push((format!("style:{}", scene.style.word()), 1.0));
    out.push((format!("mirrored:{}", scene.mirrored), 0.4));
    out.push((format!("zoom:{}", scene.zoom > 1.0), 0.4));
    out
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| !w.is_empty())
        .map(ToString::to_string)
        .collect()
}

/// Applies a modification text's recognisable words to scene features.
fn compose(features: &mut Vec<Feature>, text: &str) {
    let words = words(text);
    let has = |w: &str| words.iter().any(|x| x == w);
    let kinds: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| has(k.word()) || has(&k.plural()))
        .collect();
    let removing = has("without") || has("removed") || has("remove");
    for kind in &kinds {
        let k = kind.word();
        if removing {
            features.retain(|(f, _)| {
                !f.ends_with(&format!(":{k}"))
                    && !f.contains(&format!(":{k}:"))
                    && f != &format!("obj:{k}")
            });
            continue;
        }
        let mut set = |prefix: &str, value: Option<&str>| {
            if let Some(value) = value {
                features.retain(|(f, _)| !f.starts_with(&format!("{prefix}:{k}:")));
                features.push((format!("{prefix}:{k}:{value}"), 1.0));
            }
        };
        set(
            "color",
            Color::ALL.iter().find(|c| has(c.word())).map(|c| c.word()),
        );
        set(
            "material",
            Material::ALL
                .iter()
                .find(|c| has(c.word()))
                .map(|c| c.word()),
        );
        set(
            "texture",
            Texture::ALL
                .iter()
                .find(|c| c.word() != "plain" && has(c.word()))
                .map(|c| c.word()),
        );
        set(
            "shape",
            Shape::ALL.iter().find(|c| has(c.word())).map(|c| c.word()),
        );
        if !features.iter().any(|(f, _)| f == &format!("obj:{k}")) {
            features.push((format!("obj:{k}"), 1.0));
        }
    }
    let mut global = |prefix: &str, value: Option<&str>| {
        if let Some(value) = value {
            features.retain(|(f, _)| !f.starts_with(&format!("{prefix}:")));
            features.push((format!("{prefix}:{value}"), 1.0));
        }
    };
    let text_lower = text.to_lowercase();
    global(
        "time",
        TimeOfDay::ALL
            .iter()
            .find(|t| text_lower.contains(t.word()))
            .map(|t| t.word()),
    );
    global(
        "weather",
        Weather::ALL
            .iter()
            .find(|t| t.word() != "clear" && text_lower.contains(t.word()))
            .map(|t| t.word()),
    );
    global(
        "style",
        Style::ALL
            .iter()
            .find(|t| t.word() != "photo" && text_lower.contains(t.word()))
            .map(|t| t.word()),
    );
}

fn text_features(text: &str) -> Vec<Feature> {
    words(text)
        .into_iter()
        .map(|w| (format!("word:{w}"), 1.0))
        .collect()
}

/// Hashes features into a vector of `dim`, adds noise, and L2-normalises.
fn vectorize(features: &[Feature], dim: usize, noise: f32, rng: &mut Rng) -> Vec<f32> {
    let dim = dim.max(1);
    let mut v = vec![0.0f32; dim];
    for (name, weight) in features {
        let hash = blake3::hash(name.as_bytes());
        let bytes = hash.as_bytes();
        for lane in 0..3 {
            let index =
                usize::from(u16::from_le_bytes([bytes[lane * 3], bytes[lane * 3 + 1]])) % dim;
            let sign = if bytes[lane * 3 + 2] & 1 == 0 {
                1.0
            } else {
                -1.0
            };
            v[index] += sign * weight;
        }
    }
    #[expect(clippy::cast_possible_truncation, reason = "noise needs no precision")]
    for x in &mut v {
        *x += noise * (rng.unit() as f32 - 0.5) * 2.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Embeds an (optional) image scene and an (optional) text.
#[must_use]
pub fn embed(
    style: EmbedStyle,
    scene: Option<&Scene>,
    image_digest: Option<&[u8; 32]>,
    text: &str,
    dim: usize,
    noise: f32,
    model: &str,
) -> Vec<f32> {
    let mut features = match (scene, image_digest) {
        (Some(scene), _) => scene_features(scene),
        (None, Some(digest)) => vec![(format!("photo:{}", digest[0]), 1.0)],
        (None, None) => Vec::new(),
    };
    let instructionless = text.rsplit_once(": ").map_or(text, |(_, t)| t);
    match (style, scene.is_some() || image_digest.is_some()) {
        (EmbedStyle::Compose, true) => compose(&mut features, instructionless),
        (_, false) => features.extend(text_features(instructionless)),
        (EmbedStyle::Image, true) => {}
    }
    let mut seed_text = format!("{model}|{text}|");
    if let Some(scene) = scene {
        seed_text.push_str(&serde_json::to_string(scene).unwrap_or_default());
    } else if let Some(digest) = image_digest {
        seed_text.push_str(&hex(digest));
    }
    let mut rng = Rng::from_text(&seed_text);
    vectorize(&features, dim, noise, &mut rng)
}
