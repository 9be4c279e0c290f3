//! Where a benchmark's images are: a folder, or a tar archive, whole or split into parts
//! (`imgs_mc.tar.partaa`, `imgs_mc.tar.partab`, ...: the official release), read in place
//! without unpacking. The parts are one stream in name order; members are matched by their file
//! name (the archive's folders are ignored), and reading one seeks straight to it.
//!
//! The tar reader understands ustar and GNU headers, GNU long names (`L`) and pax `path`
//! records (`x`); it indexes the archive once (headers only, data skipped by seeking).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

/// A benchmark's images.
#[derive(Debug, Clone)]
pub enum Images {
    /// A folder: `<folder>/<name>`.
    Folder(PathBuf),
    /// A tar archive in one or more parts.
    Tar(TarImages),
}

/// An indexed tar archive (see the module docs).
#[derive(Debug, Clone)]
pub struct TarImages {
    /// The parts, in stream order, with their sizes.
    parts: Vec<(PathBuf, u64)>,
    /// File name -> (offset in the stream, size).
    members: HashMap<String, (u64, u64)>,
}

const BLOCK: u64 = 512;

impl Images {
    /// The images of a benchmark in `dir` given `--images` (a folder, a `.tar`, or one part of
    /// a split archive), or found beside the JSONL files: `dir/images`, a split `*.tar.part*`
    /// archive, a `*.tar`, else `dir` itself.
    ///
    /// # Errors
    /// A message naming the archive when it cannot be read or is not a tar archive.
    pub fn locate(dir: &Path, given: Option<&Path>) -> Result<Self, String> {
        if let Some(path) = given {
            if path.is_dir() {
                return Ok(Self::Folder(path.to_path_buf()));
            }
            if path.is_file() {
                return Ok(Self::Tar(TarImages::open(&parts_of(path))?));
            }
            return Err(format!(
                "`{}` is neither a folder nor an archive",
                path.display()
            ));
        }
        if dir.join("images").is_dir() {
            return Ok(Self::Folder(dir.join("images")));
        }
        let mut archives: Vec<PathBuf> = fs_err::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                        name.contains(".tar.part")
                            || p.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        archives.sort();
        match archives.first() {
            Some(first) => Ok(Self::Tar(TarImages::open(&parts_of(first))?)),
            None => Ok(Self::Folder(dir.to_path_buf())),
        }
    }

    /// Whether an image of this name exists.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Folder(dir) => dir.join(name).is_file(),
            Self::Tar(tar) => tar.members.contains_key(base_name(name)),
        }
    }

    /// The bytes of the image `name`.
    ///
    /// # Errors
    /// A message naming the image and where it was looked for.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        match self {
            Self::Folder(dir) => fs_err::read(dir.join(name)).map_err(|e| e.to_string()),
            Self::Tar(tar) => tar.read(name),
        }
    }

    /// Where the images are, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(dir) => format!("`{}`", dir.display()),
            Self::Tar(tar) => match tar.parts.as_slice() {
                [one] => format!("the archive `{}`", one.0.display()),
                parts => format!(
                    "the archive `{}` ({} parts)",
                    parts[0].0.display(),
                    parts.len()
                ),
            },
        }
    }
}

/// `path` and, for a part of a split archive (`x.tar.partNN`), all its sibling parts, in
/// stream order (by suffix: numerically when every suffix is a number, else by name).
fn parts_of(path: &Path) -> Vec<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some(at) = name.find(".tar.part") else {
        return vec![path.to_path_buf()];
    };
    let prefix = &name[..at + ".tar.part".len()];
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut parts: Vec<(String, PathBuf)> = fs_err::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.to_string();
                    n.strip_prefix(prefix)
                        .map(|suffix| (suffix.to_string(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    if parts.iter().all(|(s, _)| s.parse::<u64>().is_ok()) {
        parts.sort_by_key(|(s, _)| s.parse::<u64>().unwrap_or(0));
    } else {
        parts.sort();
    }
    parts.into_iter().map(|(_, p)| p).collect()
}

fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// An octal (or GNU base-256) number field.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| char::from(*b))
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The `path` of a pax extended header, if any.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        let record = rest.get(space + 1..len)?;
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = rest.get(len..)?;
    }
    None
}

impl TarImages {
    /// Indexes the archive made of `parts`.
    ///
    /// # Errors
    /// A message naming the archive and the offset of a broken header.
    pub fn open(parts: &[PathBuf]) -> Result<Self, String> {
        let mut sized = Vec::with_capacity(parts.len());
        for part in parts {
            let size = fs_err::metadata(part).map_err(|e| e.to_string())?.len();
            sized.push((part.clone(), size));
        }
        let mut tar = Self {
            parts: sized,
            members: HashMap::new(),
        };
        let total: u64 = tar.parts.iter().map(|p| p.1).sum();
        let name = tar
            .parts
            .first()
            .map(|p| p.0.display().to_string())
            .unwrap_or_default();
        let mut offset = 0u64;
        let mut long_name: Option<String> = None;
        let mut header = [0u8; 512];
        while offset + BLOCK <= total {
            tar.read_at(offset, &mut header)?;
            if header.iter().all(|b| *b == 0) {
                break;
            }
            let broken = || format!("`{name}` is not a tar archive (bad header at byte {offset})");
            let size = number(&header[124..136]).ok_or_else(broken)?;
            let stored: u64 = header[148..156]
                .iter()
                .take_while(|b| **b != 0 && **b != b' ')
                .fold(0u64, |n, b| n * 8 + u64::from(b.wrapping_sub(b'0')));
            let sum: u64 = header
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(*b)
                    }
                })
                .sum();
            if stored != sum {
                return Err(broken());
            }
            let data = offset + BLOCK;
            let next = data + size.div_ceil(BLOCK) * BLOCK;
            match header[156] {
                b'L' | b'x' => {
                    let len = usize::try_from(size.min(1 << 20)).unwrap_or(0);
                    let mut body = vec![0u8; len];
                    tar.read_at(data, &mut body)?;
                    long_name = if header[156] == b'L' {
                        Some(text(&body))
                    } else {
                        pax_path(&body)
                    };
                }
                b'0' | 0 | b'7' => {
                    let path = long_name.take().unwrap_or_else(|| {
                        let prefix = text(&header[345..500]);
                        let base = text(&header[0..100]);
                        if prefix.is_empty() {
                            base
                        } else {
                            format!("{prefix}/{base}")
                        }
                    });
                    tar.members
                        .insert(base_name(&path).to_string(), (data, size));
                }
                _ => long_name = None,
            }
            offset = next;
        }
        Ok(tar)
    }

    /// The member files' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, String> {
        let Some(&(offset, size)) = self.members.get(base_name(name)) else {
            return Err(format!("no member `{name}` in the archive"));
        };
        let mut out = vec![0u8; usize::try_from(size).map_err(|e| e.to_string())?];
        self.read_at(offset, &mut out)?;
        Ok(out)
    }

    /// Fills `buf` from the stream at `offset`, across part boundaries.
    fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), String> {
        let mut start = 0u64;
        for (path, size) in &self.parts {
            if buf.is_empty() {
                break;
            }
            if offset >= start + size {
                start += size;
                continue;
            }
            let within = offset - start;
            let take = usize::try_from((size - within).min(buf.len() as u64)).unwrap_or(0);
            let mut file = File::open(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
            file.seek(SeekFrom::Start(within))
                .and_then(|_| file.read_exact(&mut buf[..take]))
                .map_err(|e| format!("`{}`: {e}", path.display()))?;
            buf = &mut buf[take..];
            offset += take as u64;
            start += size;
        }
        if buf.is_empty() {
            Ok(())
        } else {
            Err("the archive ends inside a member (a part is missing or cut short)".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header block for `name` with `size` bytes.
    fn header(name: &str, size: usize, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, body: &[u8], kind: u8) {
        out.extend(header(name, body.len(), kind));
        out.extend(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn reads_members_of_a_split_archive_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        member(&mut tar, "imgs_mc/", b"", b'5');
        member(&mut tar, "imgs_mc/a.png", b"first image", b'0');
        let long = format!("imgs_mc/{}/b.png", "d".repeat(120));
        member(
            &mut tar,
            "././@LongLink",
            format!("{long}\0").as_bytes(),
            b'L',
        );
        member(&mut tar, "imgs_mc/truncated-name", &vec![7u8; 1500], b'0');
        member(&mut tar, "x", b"22 path=imgs_mc/c.png\n", b'x');
        member(&mut tar, "imgs_mc/ignored", b"third", b'0');
        tar.extend(vec![0u8; 1024]);
        // Split at awkward places: inside a header and inside a member.
        let cuts = [700, 1900, tar.len()];
        let mut from = 0;
        for (i, to) in cuts.iter().enumerate() {
            fs_err::write(
                dir.path()
                    .join(format!("imgs_mc.tar.part{}", ["aa", "ab", "ac"][i])),
                &tar[from..*to],
            )
            .unwrap();
            from = *to;
        }
        let images = Images::locate(dir.path(), None).unwrap();
        assert!(matches!(images, Images::Tar(_)), "{images:?}");
        assert_eq!(images.read("a.png").unwrap(), b"first image");
        assert_eq!(images.read("b.png").unwrap(), vec![7u8; 1500]);
        assert_eq!(images.read("c.png").unwrap(), b"third");
        assert!(images.contains("imgs_mc/a.png"));
        assert!(!images.contains("zzz.png"));
        assert!(images.read("zzz.png").unwrap_err().contains("no member"));
        assert!(
            images.describe().contains("3 parts"),
            "{}",
            images.describe()
        );
        // Given one part explicitly, the others are found.
        let given = Images::locate(
            Path::new("/nonexistent"),
            Some(&dir.path().join("imgs_mc.tar.partab")),
        )
        .unwrap();
        assert_eq!(given.read("c.png").unwrap(), b"third");
    }

    #[test]
    fn a_missing_part_or_garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        member(&mut tar, "a.png", &vec![1u8; 3000], b'0');
        fs_err::write(dir.path().join("x.tar.part1"), &tar[..1024]).unwrap();
        let images = Images::locate(dir.path(), None).unwrap();
        let error = images.read("a.png").unwrap_err();
        assert!(error.contains("ends inside a member"), "{error}");

        let junk = tempfile::tempdir().unwrap();
        fs_err::write(junk.path().join("bad.tar"), vec![b'z'; 2048]).unwrap();
        let error = Images::locate(junk.path(), None).unwrap_err();
        assert!(error.contains("not a tar archive"), "{error}");
    }
}
