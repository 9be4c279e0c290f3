//! Image files: PNG with the scene in a `tEXt` chunk (key `edir-scene`), and decoding of any
//! PNG, JPEG or WebP (a user's photo has no scene; the simulated models treat it generically).

use std::io::Cursor;

use crate::render::Pixels;
use crate::scene::Scene;

/// The PNG text key that carries the scene as JSON.
pub const SCENE_KEY: &str = "edir-scene";
/// Largest image the simulator decodes (pixels), against decompression bombs.
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not an image we can decode.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// Could not encode.
    #[error("cannot encode image: {0}")]
    Encode(String),
}

/// Encodes pixels as PNG, with the scene when given.
///
/// # Errors
/// [`CodecError::Encode`] when the PNG encoder fails.
pub fn encode_png(pixels: &Pixels, scene: Option<&Scene>) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, pixels.width, pixels.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        if let Some(scene) = scene {
            let json =
                serde_json::to_string(scene).map_err(|e| CodecError::Encode(e.to_string()))?;
            encoder
                .add_text_chunk(SCENE_KEY.to_string(), json)
                .map_err(|e| CodecError::Encode(e.to_string()))?;
        }
        let mut writer = encoder
            .write_header()
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        writer
            .write_image_data(&pixels.data)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        writer
            .finish()
            .map_err(|e| CodecError::Encode(e.to_string()))?;
    }
    Ok(out)
}

/// Encodes pixels as JPEG (no scene survives).
///
/// # Errors
/// [`CodecError::Encode`] when the encoder fails.
pub fn encode_jpeg(pixels: &Pixels) -> Result<Vec<u8>, CodecError> {
    let mut out = Cursor::new(Vec::new());
    let image = image::RgbImage::from_raw(pixels.width, pixels.height, pixels.data.clone())
        .ok_or_else(|| CodecError::Encode("pixel buffer has the wrong size".into()))?;
    image
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out.into_inner())
}

/// Only the scene of a PNG, if it carries one (cheap: walks the chunks before the image data,
/// checks the text chunk's CRC, decodes no pixels and sets up no PNG decoder).
#[must_use]
pub fn read_scene(bytes: &[u8]) -> Option<Scene> {
    serde_json::from_str(&scene_text(bytes)?).ok()
}

/// The `edir-scene` text of a PNG: the chunks up to the first `IDAT`, as a PNG decoder's
/// header pass sees them (Latin-1 text, as `tEXt` is defined).
fn scene_text(bytes: &[u8]) -> Option<String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let mut rest = bytes.strip_prefix(SIGNATURE)?;
    loop {
        let length = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
        let chunk = rest.get(4..8 + length + 4)?;
        let (typed, crc) = chunk.split_at(4 + length);
        let (kind, data) = typed.split_at(4);
        match kind {
            b"IDAT" | b"IEND" => return None,
            b"tEXt" => {
                if crc32fast::hash(typed).to_be_bytes() != crc {
                    return None;
                }
                if let Some(text) = data
                    .strip_prefix(SCENE_KEY.as_bytes())
                    .and_then(|t| t.strip_prefix(b"\0"))
                {
                    return Some(text.iter().map(|&b| char::from(b)).collect());
                }
            }
            _ => {}
        }
        rest = &rest[8 + length + 4..];
    }
}

/// Decodes any supported image to RGB pixels, with its scene when it carries one.
///
/// # Errors
/// [`CodecError::Decode`] for a corrupt, unsupported or oversized image.
pub fn decode(bytes: &[u8]) -> Result<(Pixels, Option<Scene>), CodecError> {
    let scene = read_scene(bytes);
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    let rgb = image.to_rgb8();
    let (width, height) = rgb.dimensions();
    Ok((
        Pixels {
            width,
            height,
            data: rgb.into_raw(),
        },
        scene,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn scene_survives_the_png_round_trip() {
        let scene = Scene::random(&mut Rng::new(7), 96, 64);
        let pixels = crate::render::render(&scene);
        let png = encode_png(&pixels, Some(&scene)).unwrap();
        let (decoded, read) = decode(&png).unwrap();
        assert_eq!(read.as_ref(), Some(&scene));
        assert_eq!(decoded, pixels);
    }

    #[test]
    fn the_scene_is_read_without_a_decoder_and_a_damaged_chunk_is_none() {
        let scene = Scene::random(&mut Rng::new(11), 64, 64);
        let png = encode_png(&crate::render::render(&scene), Some(&scene)).unwrap();
        assert_eq!(read_scene(&png).as_ref(), Some(&scene));
        // What the png crate reads from the same bytes.
        let reader = png::Decoder::new(Cursor::new(&png)).read_info().unwrap();
        let text = &reader.info().uncompressed_latin1_text;
        assert_eq!(scene_text(&png).as_deref(), Some(text[0].text.as_str()));
        // A flipped byte inside the text chunk fails its CRC; a cut file ends the walk.
        let at = png.windows(4).position(|w| w == b"tEXt").unwrap() + 20;
        let mut damaged = png.clone();
        damaged[at] ^= 0x01;
        assert!(read_scene(&damaged).is_none());
        assert!(read_scene(&png[..at]).is_none());
        // A PNG without a scene has none.
        let plain = encode_png(&crate::render::render(&scene), None).unwrap();
        assert!(read_scene(&plain).is_none());
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode(b"not an image").is_err());
        assert!(read_scene(b"\x89PNG broken").is_none());
    }
}
