//! Row-major f32 matrices, and `.npy` files (float32, C order), as numpy writes them.

use std::path::Path;

/// A row-major matrix of `rows x dim` f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub dim: usize,
    /// `rows * dim` values.
    pub data: Vec<f32>,
}

/// Why a matrix cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The file could not be read.
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a float32 C-order `.npy` file.
    #[error("`{}` is not a float32 C-order .npy matrix: {reason}", path.display())]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A value is NaN or infinite.
    #[error("`{}` row {row} holds a NaN or infinite value", path.display())]
    NotFinite {
        /// The file.
        path: std::path::PathBuf,
        /// The first bad row.
        row: usize,
    },
}

impl Matrix {
    /// A matrix from its values.
    ///
    /// # Panics
    /// When `data.len() != rows * dim`.
    #[must_use]
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Self {
        assert_eq!(
            data.len(),
            rows * dim,
            "matrix data does not match its shape"
        );
        Self { rows, dim, data }
    }

    /// Row `i`.
    #[must_use]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Scales every row to unit length (zero rows stay zero).
    pub fn normalize_rows(&mut self) {
        for row in self.data.chunks_exact_mut(self.dim.max(1)) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                for x in row {
                    *x /= norm;
                }
            }
        }
    }

    /// Reads a 2-D float32 `.npy` file and checks every value is finite.
    ///
    /// # Errors
    /// [`MatrixError`] naming the file and what is wrong.
    pub fn read_npy(path: &Path) -> Result<Self, MatrixError> {
        let bytes = fs_err::read(path).map_err(|source| MatrixError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: &str| MatrixError::Format {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("missing the .npy magic"));
        }
        let (header_len, start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            _ => return Err(bad("unsupported .npy version")),
        };
        let header = std::str::from_utf8(
            bytes
                .get(start..start + header_len)
                .ok_or_else(|| bad("truncated header"))?,
        )
        .map_err(|_| bad("header is not text"))?;
        let descr = header
            .split("'descr':")
            .nth(1)
            .and_then(|s| s.split('\'').nth(1))
            .ok_or_else(|| bad("no `descr`"))?;
        if descr != "<f4" && descr != "=f4" {
            return Err(bad(&format!("dtype `{descr}`, expected float32 (`<f4`)")));
        }
        if header.contains("'fortran_order': True") {
            return Err(bad("Fortran order; save with np.ascontiguousarray"));
        }
        let shape = header
            .split("'shape':")
            .nth(1)
            .and_then(|s| s.split('(').nth(1))
            .and_then(|s| s.split(')').next())
            .ok_or_else(|| bad("no `shape`"))?;
        let dims: Vec<usize> = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| bad("unreadable shape"))?;
        let [rows, dim] = dims[..] else {
            return Err(bad(&format!("shape {dims:?} is not 2-D")));
        };
        let data_start = start + header_len;
        let expected = rows
            .checked_mul(dim)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| bad("shape too large"))?;
        let body = bytes
            .get(data_start..)
            .ok_or_else(|| bad("truncated data"))?;
        if body.len() != expected {
            return Err(bad(&format!(
                "{} data bytes for shape ({rows}, {dim}), expected {expected}",
                body.len()
            )));
        }
        let data: Vec<f32> = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(position) = data.iter().position(|x| !x.is_finite()) {
            return Err(MatrixError::NotFinite {
                path: path.to_path_buf(),
                row: position / dim.max(1),
            });
        }
        Ok(Self { rows, dim, data })
    }

    /// Writes a float32 `.npy` file (version 1).
    ///
    /// # Errors
    /// I/O errors, naming the file.
    pub fn write_npy(&self, path: &Path) -> Result<(), MatrixError> {
        let mut header = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
            self.rows, self.dim
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = Vec::with_capacity(10 + header.len() + self.data.len() * 4);
        bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
        bytes.extend_from_slice(
            &u16::try_from(header.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
        bytes.extend_from_slice(header.as_bytes());
        for x in &self.data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        fs_err::write(path, bytes).map_err(|source| MatrixError::Read {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.npy");
        let m = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25]);
        m.write_npy(&path).unwrap();
        assert_eq!(Matrix::read_npy(&path).unwrap(), m);
        let nan = Matrix::new(2, 2, vec![0.0, 1.0, f32::NAN, 0.0]);
        nan.write_npy(&path).unwrap();
        assert!(matches!(
            Matrix::read_npy(&path),
            Err(MatrixError::NotFinite { row: 1, .. })
        ));
        std::fs::write(&path, b"not numpy").unwrap();
        assert!(
            Matrix::read_npy(&path)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
    }
}
