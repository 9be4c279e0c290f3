//! Content-addressed artifacts: files named by the BLAKE3 of their bytes, under
//! `<workdir>/artifacts/ab/cdef...`. Writes go to a temporary file in the same folder and are
//! renamed into place; the same bytes are stored once.
//!
//! Durability is batched: on Linux [`ArtifactStore::put`] does not fsync, and
//! [`ArtifactStore::sync`] makes every artifact written so far durable with one `syncfs`. The
//! engine calls `sync` before each store transaction that refers to new artifacts, so a
//! committed row never names a file a crash could lose. (An fsync of the file and of its folder
//! per artifact cost a third of the engine's CPU time at small image sizes.) A file left torn
//! by a crash is never referred to, and `put` of the same bytes finds it does not match and
//! writes it again. Elsewhere `put` fsyncs each file, and `sync` has nothing to do.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::StoreError;
use crate::error::query;
use crate::store::Store;

/// A content hash: 64 lower-case hex digits of BLAKE3.
pub type ArtifactHash = String;

/// The artifact folder.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    /// Files written so far by this process (all clones of this store).
    written: Arc<AtomicU64>,
    /// How many of them a finished [`ArtifactStore::sync`] made durable; its lock also keeps
    /// two syncs from running at once.
    synced: Arc<Mutex<u64>>,
}

impl ArtifactStore {
    /// Uses (and creates) `root`.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the folder cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs_err::create_dir_all(&root).map_err(|source| StoreError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Self {
            root,
            written: Arc::default(),
            synced: Arc::default(),
        })
    }

    /// The folder.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the artifact with this hash lives.
    #[must_use]
    pub fn path(&self, hash: &str) -> PathBuf {
        let (prefix, rest) = hash.split_at(hash.len().min(2));
        self.root.join(prefix).join(rest)
    }

    /// Stores `bytes` and returns their hash. Storing the same bytes again writes nothing
    /// (unless the file there no longer holds them). Durable once [`ArtifactStore::sync`]
    /// returns.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the file.
    pub fn put(&self, bytes: &[u8]) -> Result<ArtifactHash, StoreError> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        let path = self.path(&hash);
        if path.is_file() && std::fs::read(&path).is_ok_and(|there| there == bytes) {
            return Ok(hash);
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        fs_err::create_dir_all(&dir).map_err(io(&dir))?;
        let mut file = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
        file.write_all(bytes).map_err(io(file.path()))?;
        if !cfg!(target_os = "linux") {
            file.as_file().sync_all().map_err(io(file.path()))?;
        }
        file.persist(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        if cfg!(target_os = "linux") {
            self.written.fetch_add(1, Ordering::Release);
        } else if let Ok(handle) = std::fs::File::open(&dir) {
            // Make the rename durable too.
            let _ = handle.sync_all();
        }
        Ok(hash)
    }

    /// Makes every artifact [`ArtifactStore::put`] has written so far durable: one `syncfs` of
    /// the artifact folder's file system on Linux (nothing when no file was written since the
    /// last sync); nothing elsewhere, where `put` fsyncs each file. Blocks: call it off the
    /// async threads.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the folder when the file system cannot be synced.
    pub fn sync(&self) -> Result<(), StoreError> {
        let target = self.written.load(Ordering::Acquire);
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if *synced >= target {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            let io = |source: std::io::Error| StoreError::Io {
                path: self.root.clone(),
                source,
            };
            let folder = std::fs::File::open(&self.root).map_err(io)?;
            rustix::fs::syncfs(&folder).map_err(|e| io(e.into()))?;
        }
        *synced = target;
        Ok(())
    }

    /// Whether artifacts were written since the last [`ArtifactStore::sync`].
    #[must_use]
    pub fn unsynced(&self) -> bool {
        self.written.load(Ordering::Acquire)
            > *self.synced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads an artifact, checking its hash.
    ///
    /// # Errors
    /// [`StoreError::Io`] when missing or unreadable, [`StoreError::Corrupt`] when the bytes
    /// no longer match the hash.
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash);
        let bytes = fs_err::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != hash {
            return Err(StoreError::Corrupt {
                what: "artifact",
                detail: format!("`{}` hashes to {actual}", path.display()),
            });
        }
        Ok(bytes)
    }
}

impl Store {
    /// Records an artifact's metadata (idempotent).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement fails.
    pub async fn record_artifact(
        &self,
        hash: &str,
        size: u64,
        media_type: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "record artifact";
        let now = self.now();
        let mut tx = self.write(OP).await?;
        sqlx::query(
            "INSERT INTO artifacts (hash, size, media_type, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(hash)
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(media_type)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query(OP))?;
        tx.commit().await.map_err(query(OP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_stored_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().join("artifacts")).unwrap();
        let a = store.put(b"pixels").unwrap();
        let b = store.put(b"pixels").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(store.get(&a).unwrap(), b"pixels");
        let files: Vec<_> = walk(store.root());
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hash = store.put(b"original").unwrap();
        std::fs::write(store.path(&hash), b"tampered").unwrap();
        assert!(matches!(store.get(&hash), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_torn_file_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hash = store.put(b"whole image").unwrap();
        // What a crash before `sync` can leave: the name, not the bytes.
        std::fs::write(store.path(&hash), b"").unwrap();
        assert_eq!(store.put(b"whole image").unwrap(), hash);
        assert_eq!(store.get(&hash).unwrap(), b"whole image");
    }

    #[test]
    fn sync_makes_what_was_written_durable_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert!(!store.unsynced());
        let copy = store.clone();
        copy.put(b"a").unwrap();
        assert_eq!(store.unsynced(), cfg!(target_os = "linux"));
        store.sync().unwrap();
        assert!(!store.unsynced() && !copy.unsynced());
        store.put(b"a").unwrap();
        assert!(!store.unsynced(), "the same bytes again write nothing");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
