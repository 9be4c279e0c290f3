//! Reference images: a folder (recursively) or a JSONL manifest, listed once, drawn per
//! subcategory in a seeded order, decoded with limits and downscaled before they are stored.
//!
//! Drawing rule: each subcategory walks its own permutation of the pool (seeded by the
//! pipeline seed and the subcategory id), so a photo serves a subcategory once; when the pool
//! runs out it starts a fresh permutation (a second use, recorded in the log) unless
//! `reuse_per_subcategory` is false and `allow_reuse` is off, in which case the subcategory is
//! exhausted. Unreadable, truncated or oversized files are recorded and never drawn again.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{ImageFormat, ImageReader, Limits};
use serde::Deserialize;

use crate::error::EngineError;

/// Image file extensions a folder source picks up.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];
/// Decoding limit per side, against decompression bombs.
const MAX_DECODE_SIDE: u32 = 20_000;
/// Decoding memory limit.
const MAX_DECODE_BYTES: u64 = 1 << 30;

/// One reference candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Stable name: the path relative to the folder, or the manifest's `id`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
}

/// A decoded, size-limited reference ready to store.
#[derive(Debug, Clone)]
pub struct LoadedReference {
    /// Encoded bytes to send (the original file when it needed no downscaling).
    pub bytes: Vec<u8>,
    /// Width after downscaling.
    pub width: u32,
    /// Height after downscaling.
    pub height: u32,
}

/// The pool of references, in a stable (sorted) order.
#[derive(Debug, Clone)]
pub struct ReferencePool {
    /// The candidates.
    pub references: Vec<Reference>,
}

#[derive(Deserialize)]
struct ManifestLine {
    image: String,
    #[serde(default)]
    id: Option<String>,
}

impl ReferencePool {
    /// Lists a folder (recursively, sorted by relative path) or reads a manifest.
    ///
    /// # Errors
    /// [`EngineError::Source`] when the folder or manifest cannot be read, a manifest line is
    /// malformed (with its line number), or the pool is empty.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let references = if path.is_dir() {
            let mut found = Vec::new();
            walk(path, path, &mut found)?;
            found.sort_by(|a, b| a.name.cmp(&b.name));
            found
        } else if path.is_file() {
            read_manifest(path)?
        } else {
            return Err(EngineError::Source {
                path: path.to_path_buf(),
                message: "no such folder or manifest".into(),
            });
        };
        if references.is_empty() {
            return Err(EngineError::Source {
                path: path.to_path_buf(),
                message: format!(
                    "no reference images found (looked for {})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        Ok(Self { references })
    }

    /// How many candidates.
    #[must_use]
    pub fn len(&self) -> usize {
        self.references.len()
    }

    /// Whether the pool is empty (never, once opened).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.references.is_empty()
    }
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<Reference>) -> Result<(), EngineError> {
    let entries = fs_err::read_dir(dir).map_err(|e| EngineError::Source {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::Source {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, found)?;
            continue;
        }
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image {
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            found.push(Reference { name, path });
        }
    }
    Ok(())
}

fn read_manifest(path: &Path) -> Result<Vec<Reference>, EngineError> {
    let text = fs_err::read_to_string(path).map_err(|e| EngineError::Source {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut references = Vec::new();
    let mut names = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: ManifestLine = serde_json::from_str(line).map_err(|e| EngineError::Source {
            path: path.to_path_buf(),
            message: format!(
                "line {}: expected {{\"image\": PATH, \"id\": NAME?}}: {e}",
                index + 1
            ),
        })?;
        let name = entry.id.unwrap_or_else(|| entry.image.clone());
        if !names.insert(name.clone()) {
            return Err(EngineError::Source {
                path: path.to_path_buf(),
                message: format!("line {}: duplicate reference `{name}`", index + 1),
            });
        }
        references.push(Reference {
            name,
            path: base.join(&entry.image),
        });
    }
    Ok(references)
}

/// Reads, checks and downscales one reference. Errors are per file and never fatal to a run.
///
/// # Errors
/// A message saying why the file is unusable (unreadable, too large, not an image, truncated).
pub fn load_reference(
    reference: &Reference,
    max_side: u32,
    max_file_mb: f64,
) -> Result<LoadedReference, String> {
    let meta = fs_err::metadata(&reference.path).map_err(|e| e.to_string())?;
    #[expect(clippy::cast_precision_loss, reason = "file sizes are far below 2^52")]
    let mb = meta.len() as f64 / (1024.0 * 1024.0);
    if mb > max_file_mb {
        return Err(format!(
            "file is {mb:.1} MB, over the source's `max_file_mb` of {max_file_mb}"
        ));
    }
    let bytes = fs_err::read(&reference.path).map_err(|e| e.to_string())?;
    let mut reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader
        .format()
        .ok_or_else(|| "not a PNG, JPEG or WebP image".to_string())?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    let (width, height) = (image.width(), image.height());
    if width.max(height) <= max_side {
        // Keep the file as it is (a simulator scene keeps its description chunk).
        return Ok(LoadedReference {
            bytes,
            width,
            height,
        });
    }
    let scaled = image.resize(max_side, max_side, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    let target = if format == ImageFormat::Jpeg {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    };
    let scaled = if target == ImageFormat::Jpeg {
        image::DynamicImage::ImageRgb8(scaled.to_rgb8())
    } else {
        scaled
    };
    scaled
        .write_to(&mut Cursor::new(&mut out), target)
        .map_err(|e| format!("cannot re-encode the downscaled image: {e}"))?;
    Ok(LoadedReference {
        bytes: out,
        width: scaled.width(),
        height: scaled.height(),
    })
}

/// Image width and height from encoded bytes (header only), if readable. A PNG's come from
/// its `IHDR` chunk (CRC checked) without setting up a decoder; other formats ask the `image`
/// crate.
#[must_use]
pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if let Some(rest) = bytes.strip_prefix(PNG) {
        // length (13), `IHDR`, width, height, 5 more bytes, CRC over type and data.
        let header = rest.get(..25)?;
        if header[..8] != *b"\0\0\0\x0dIHDR"
            || crc32fast::hash(&header[4..21]).to_be_bytes() != header[21..25]
        {
            return None;
        }
        let width = u32::from_be_bytes(header[8..12].try_into().ok()?);
        let height = u32::from_be_bytes(header[12..16].try_into().ok()?);
        return (width > 0 && height > 0).then_some((width, height));
    }
    ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// The MIME type of encoded image bytes (`image/png` when unknown).
#[must_use]
pub fn mime_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => "image/jpeg",
        Ok(ImageFormat::WebP) => "image/webp",
        _ => "image/png",
    }
}

/// The file extension for encoded image bytes.
#[must_use]
pub fn extension_of(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(ImageFormat::Jpeg) => "jpg",
        Ok(ImageFormat::WebP) => "webp",
        _ => "png",
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates with `SplitMix64`).
#[must_use]
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let j = usize::try_from(z % (i as u64 + 1)).unwrap_or(0);
        order.swap(i, j);
    }
    order
}

/// A stable 64-bit seed from parts (BLAKE3 of their text).
#[must_use]
pub fn derive_seed(parts: &[&str]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let bytes = hasher.finalize();
    let mut eight = [0u8; 8];
    eight.copy_from_slice(&bytes.as_bytes()[..8]);
    // Keep it positive as an i64 (the store's column).
    u64::from_le_bytes(eight) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_and_complete() {
        let a = permutation(50, 7);
        let b = permutation(50, 7);
        let c = permutation(50, 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn corrupt_and_oversized_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.png");
        fs_err::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let r = Reference {
            name: "bad.png".into(),
            path: bad,
        };
        let error = load_reference(&r, 1024, 10.0).unwrap_err();
        assert!(error.contains("decode"), "{error}");
        let error = load_reference(&r, 1024, 0.000_001).unwrap_err();
        assert!(error.contains("max_file_mb"), "{error}");
    }

    #[test]
    fn png_dimensions_come_from_a_checked_header() {
        let mut png = Vec::new();
        image::RgbImage::new(37, 21)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        assert_eq!(dimensions(&png), Some((37, 21)));
        // The same as the image crate says.
        let by_crate = ImageReader::new(Cursor::new(&png))
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .unwrap();
        assert_eq!(dimensions(&png), Some(by_crate));
        let mut damaged = png.clone();
        damaged[18] ^= 0x40; // inside the width: the CRC no longer matches
        assert_eq!(dimensions(&damaged), None);
        assert_eq!(dimensions(&png[..20]), None);
        assert_eq!(dimensions(b"\x89PNG\r\n\x1a\nnot really"), None);
        let mut jpeg = Vec::new();
        image::RgbImage::new(9, 5)
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(dimensions(&jpeg), Some((9, 5)));
    }
}
