//! Writing an EDIR-layout benchmark: the three JSONL files, the images folder and any extra
//! files (dataset card, stats), so that the same records give the same bytes.
//!
//! JSON files are written to a temporary file and renamed into place. Images are copied from
//! their content-addressed source only when the file there is missing or differs (checked by
//! BLAKE3), and files in `images/` that the export no longer names are removed.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;

/// One image of the export.
#[derive(Debug, Clone)]
pub struct ExportImage {
    /// File name inside `images/`.
    pub name: String,
    /// BLAKE3 hex of the bytes.
    pub hash: String,
}

/// Everything one export writes.
#[derive(Debug, Clone, Default)]
pub struct Export {
    /// Lines of `queries.jsonl`.
    pub queries: Vec<serde_json::Value>,
    /// Lines of `corpus.jsonl`.
    pub corpus: Vec<serde_json::Value>,
    /// Lines of `instances.jsonl`.
    pub instances: Vec<serde_json::Value>,
    /// The images.
    pub images: Vec<ExportImage>,
    /// Other files at the top level (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

/// Writes `export` into `dir` (created when missing); `read` gives an image's bytes (only for
/// the images not already there with the same content).
///
/// # Errors
/// I/O errors, naming the file, and those of `read`.
pub fn write(
    dir: &Path,
    export: &Export,
    read: &dyn Fn(&ExportImage) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    let images = dir.join("images");
    fs_err::create_dir_all(&images)?;
    for (name, lines) in [
        ("queries.jsonl", &export.queries),
        ("corpus.jsonl", &export.corpus),
        ("instances.jsonl", &export.instances),
    ] {
        let mut text = String::new();
        for line in lines {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        write_atomic(&dir.join(name), text.as_bytes())?;
    }
    for (name, bytes) in &export.files {
        write_atomic(&dir.join(name), bytes)?;
    }
    let mut keep = HashSet::new();
    for image in &export.images {
        keep.insert(image.name.clone());
        let target = images.join(&image.name);
        if !same_content(&target, &image.hash)? {
            let bytes = read(image)?;
            write_atomic(&target, &bytes)?;
        }
    }
    for entry in fs_err::read_dir(&images)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !keep.contains(&name) && entry.path().is_file() {
            fs_err::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn same_content(path: &Path, hash: &str) -> std::io::Result<bool> {
    match fs_err::read(path) {
        Ok(bytes) => Ok(blake3::hash(&bytes).to_hex().as_str() == hash),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut file = fs_err::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs_err::rename(&tmp, path)
}
