//! Content-addressed artifacts: byte strings named by their BLAKE3, appended to pack files
//! under `<workdir>/artifacts/packs/`. A file per artifact cost an inode each, and creating
//! inodes was the largest single cost of the engine at small image sizes (a fifth of its CPU
//! time on ext4); a pack costs one per 256 MiB.
//!
//! A pack is a sequence of records: `EDA1`, the 32-byte hash, the length (u64, little endian),
//! the bytes. Each process appends to packs of its own (named by a `UUIDv7`), so readers never
//! see a record half written except at the end of a pack whose writer crashed; opening the
//! store indexes every whole record and ignores such a tail. The same bytes are stored once.
//! Artifacts written as single files by earlier versions (`artifacts/ab/cdef...`) are still
//! read.
//!
//! Durability is batched: [`ArtifactStore::put`] does not fsync, and [`ArtifactStore::sync`]
//! makes every artifact written so far durable (an fdatasync of the packs written since the
//! last sync). The engine calls `sync` before each store transaction that refers to new
//! artifacts, so a committed row never names bytes a crash could lose. Every read checks the
//! hash.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::StoreError;
use crate::error::query;
use crate::store::Store;

/// A content hash: 64 lower-case hex digits of BLAKE3.
pub type ArtifactHash = String;

const MAGIC: &[u8; 4] = b"EDA1";
const HEADER_LEN: usize = 4 + 32 + 8;
const HEADER: u64 = HEADER_LEN as u64;
/// A pack this process appends to is closed (and a new one started) past this size.
const PACK_ROLL: u64 = 256 << 20;
/// Largest artifact accepted (a record's length beyond this marks a corrupt pack).
const MAX_ARTIFACT: u64 = u32::MAX as u64;

/// The artifact folder.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Where each artifact of the packs lives.
    index: RwLock<HashMap<Key, Location>>,
    /// The packs, by number, with how far they were indexed.
    packs: RwLock<Vec<Pack>>,
    /// The pack this process appends to.
    writer: Mutex<Option<Writer>>,
    /// Records written so far by this process.
    written: AtomicU64,
    /// How many of them a finished [`ArtifactStore::sync`] made durable.
    synced: Mutex<u64>,
    /// A pack given up after a failed write could not be synced either: its earlier records
    /// may not be durable, so every later sync fails too.
    lost: AtomicBool,
}

/// The index's key: the first 128 bits of the hash (a collision among a run's millions of
/// artifacts has a chance below 1e-24; reads check the whole hash anyway). With the 16-byte
/// location that is 32 bytes an artifact, so a 100,000-sample run's index stays near 30 MB.
type Key = [u8; 16];

fn key(hash: &[u8; 32]) -> Key {
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash[..16]);
    key
}

#[derive(Debug, Clone, Copy)]
struct Location {
    offset: u64,
    len: u32,
    pack: u16,
    /// Read back and matched, or written by this process: a `put` of the same bytes can
    /// rely on it. (A record of a crashed writer may be whole in length, not in content.)
    trusted: bool,
}

#[derive(Debug)]
struct Pack {
    path: PathBuf,
    file: Arc<File>,
    indexed: u64,
}

#[derive(Debug)]
struct Writer {
    pack: u16,
    file: File,
    len: u64,
    /// Appended to (or created) since the last sync.
    dirty: bool,
    created: bool,
}

impl ArtifactStore {
    /// Uses (and creates) `root`, indexing the packs in it.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the folder cannot be created or a pack cannot be read.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let packs = root.join("packs");
        fs_err::create_dir_all(&packs).map_err(|source| StoreError::Io {
            path: packs.clone(),
            source,
        })?;
        let store = Self {
            root,
            inner: Arc::default(),
        };
        store.refresh()?;
        Ok(store)
    }

    /// The folder.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// Where an artifact written by an earlier version, as a file of its own, lives.
    fn loose_path(&self, hash: &str) -> PathBuf {
        let (prefix, rest) = hash.split_at(hash.len().min(2));
        self.root.join(prefix).join(rest)
    }

    /// Indexes packs (and records) that appeared since the last look: other processes'.
    fn refresh(&self) -> Result<(), StoreError> {
        let dir = self.packs_dir();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let mut names: Vec<PathBuf> = fs_err::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        names.sort();
        let mut packs = self
            .inner
            .packs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for path in names {
            if !packs.iter().any(|p| p.path == path) {
                let file = File::open(&path).map_err(io(&path))?;
                packs.push(Pack {
                    path,
                    file: Arc::new(file),
                    indexed: 0,
                });
            }
        }
        let mut index = self
            .inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (number, pack) in packs.iter_mut().enumerate() {
            if pack.indexed == u64::MAX {
                // One of ours: indexed as it is written.
                continue;
            }
            let end = pack.file.metadata().map_err(io(&pack.path))?.len();
            let mut offset = pack.indexed;
            let mut header = [0u8; HEADER_LEN];
            while offset + HEADER <= end {
                pack.file
                    .read_exact_at(&mut header, offset)
                    .map_err(io(&pack.path))?;
                let len = u64::from_le_bytes(header[36..44].try_into().unwrap_or([0; 8]));
                if &header[..4] != MAGIC || len > MAX_ARTIFACT || offset + HEADER + len > end {
                    // The tail of a crashed (or still writing) writer's pack.
                    break;
                }
                let (Ok(pack), Ok(stored)) = (u16::try_from(number), u32::try_from(len)) else {
                    break;
                };
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&header[4..36]);
                index.entry(key(&hash)).or_insert(Location {
                    offset: offset + HEADER,
                    len: stored,
                    pack,
                    trusted: false,
                });
                offset += HEADER + len;
            }
            pack.indexed = offset;
        }
        Ok(())
    }

    /// Stores `bytes` and returns their hash. Storing the same bytes again writes nothing.
    /// Durable once [`ArtifactStore::sync`] returns.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the pack.
    pub fn put(&self, bytes: &[u8]) -> Result<ArtifactHash, StoreError> {
        let digest = blake3::hash(bytes);
        let hash = digest.to_hex().to_string();
        let known = self
            .inner
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key(digest.as_bytes()))
            .copied();
        if let Some(location) = known {
            if location.trusted {
                return Ok(hash);
            }
            if self.read_at(&location).is_ok_and(|there| there == bytes) {
                self.trust(&key(digest.as_bytes()));
                return Ok(hash);
            }
        }
        let Ok(len) = u32::try_from(bytes.len()) else {
            return Err(StoreError::Io {
                path: self.packs_dir(),
                source: std::io::Error::other(format!(
                    "an artifact of {} bytes is over the 4 GiB limit",
                    bytes.len()
                )),
            });
        };
        let mut record = Vec::with_capacity(bytes.len() + HEADER_LEN);
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(digest.as_bytes());
        record.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        record.extend_from_slice(bytes);
        let mut slot = self.writer();
        if slot.as_ref().is_none_or(|w| w.len >= PACK_ROLL) {
            if let Some(mut full) = slot.take() {
                Self::sync_writer(&mut full, &self.packs_dir())?;
            }
            *slot = Some(self.new_pack()?);
        }
        let Some(writer) = slot.as_mut() else {
            unreachable!("a writer was just put in the slot");
        };
        let offset = writer.len;
        if let Err(source) = writer.file.write_all(&record) {
            // A torn record may end this pack now: the next put starts another. The records
            // before it were stored and must still become durable: sync them now, since later
            // syncs only see the new pack (if that fails too, they report it; the put reports
            // the write).
            let path = self.pack_path(writer.pack);
            if Self::sync_writer(writer, &self.packs_dir()).is_err() {
                self.inner.lost.store(true, Ordering::Release);
            }
            *slot = None;
            return Err(StoreError::Io { path, source });
        }
        writer.len += record.len() as u64;
        writer.dirty = true;
        let pack = writer.pack;
        drop(slot);
        self.inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                key(digest.as_bytes()),
                Location {
                    offset: offset + HEADER,
                    len,
                    pack,
                    trusted: true,
                },
            );
        self.inner.written.fetch_add(1, Ordering::Release);
        Ok(hash)
    }

    fn writer(&self) -> MutexGuard<'_, Option<Writer>> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn pack_path(&self, number: u16) -> PathBuf {
        self.inner
            .packs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(usize::from(number))
            .map_or_else(|| self.packs_dir(), |p| p.path.clone())
    }

    fn trust(&self, hash: &Key) {
        if let Some(location) = self
            .inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(hash)
        {
            location.trusted = true;
        }
    }

    /// Starts a pack of this process's own.
    fn new_pack(&self) -> Result<Writer, StoreError> {
        let path = self
            .packs_dir()
            .join(format!("{}.pack", uuid::Uuid::now_v7()));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        let reader = File::open(&path).map_err(io)?;
        let mut packs = self
            .inner
            .packs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Ok(number) = u16::try_from(packs.len()) else {
            return Err(io(std::io::Error::other(
                "too many packs (65,536): start a new work directory",
            )));
        };
        packs.push(Pack {
            path: path.clone(),
            file: Arc::new(reader),
            indexed: u64::MAX,
        });
        Ok(Writer {
            pack: number,
            file,
            len: 0,
            dirty: true,
            created: true,
        })
    }

    fn sync_writer(writer: &mut Writer, dir: &Path) -> Result<(), StoreError> {
        if !writer.dirty {
            return Ok(());
        }
        Self::sync_file(&writer.file, writer.created, dir)?;
        writer.created = false;
        writer.dirty = false;
        Ok(())
    }

    /// fdatasync of a pack, and of the folder when the pack is new (its name too).
    fn sync_file(file: &File, created: bool, dir: &Path) -> Result<(), StoreError> {
        let failed = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        file.sync_data().map_err(failed)?;
        if created {
            File::open(dir).and_then(|d| d.sync_all()).map_err(failed)?;
        }
        Ok(())
    }

    /// Makes every artifact [`ArtifactStore::put`] has written so far durable (nothing to do
    /// when none was written since the last sync). Blocks: call it off the async threads.
    ///
    /// # Errors
    /// [`StoreError::Io`] naming the pack folder when the pack cannot be synced.
    pub fn sync(&self) -> Result<(), StoreError> {
        let target = self.inner.written.load(Ordering::Acquire);
        let mut synced = self
            .inner
            .synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.inner.lost.load(Ordering::Acquire) {
            return Err(StoreError::Io {
                path: self.packs_dir(),
                source: std::io::Error::other(
                    "a pack could not be synced after a failed write: artifacts may be lost",
                ),
            });
        }
        if *synced >= target {
            return Ok(());
        }
        // Only a handle is taken under the writer's lock, so puts (some on async threads) go
        // on while the disk syncs: records appended meanwhile mark the pack dirty again and
        // are counted for the next sync.
        let taken = {
            let mut slot = self.writer();
            match slot.as_mut() {
                Some(writer) if writer.dirty => {
                    let file = writer.file.try_clone().map_err(|source| StoreError::Io {
                        path: self.packs_dir(),
                        source,
                    })?;
                    writer.dirty = false;
                    Some((file, std::mem::take(&mut writer.created), writer.pack))
                }
                _ => None,
            }
        };
        if let Some((file, created, pack)) = taken
            && let Err(e) = Self::sync_file(&file, created, &self.packs_dir())
        {
            // Still owed: the next sync tries again.
            let mut slot = self.writer();
            if let Some(writer) = slot.as_mut().filter(|w| w.pack == pack) {
                writer.dirty = true;
                writer.created |= created;
            }
            return Err(e);
        }
        *synced = target;
        Ok(())
    }

    /// Whether artifacts were written since the last [`ArtifactStore::sync`].
    #[must_use]
    pub fn unsynced(&self) -> bool {
        self.inner.written.load(Ordering::Acquire)
            > *self
                .inner
                .synced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
    }

    fn read_at(&self, location: &Location) -> std::io::Result<Vec<u8>> {
        let file = self
            .inner
            .packs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(usize::from(location.pack))
            .map(|p| p.file.clone())
            .ok_or_else(|| std::io::Error::other("no such pack"))?;
        let len = usize::try_from(location.len).map_err(std::io::Error::other)?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, location.offset)?;
        Ok(bytes)
    }

    /// Where an artifact is, for messages: its pack, or the file of an earlier version.
    #[must_use]
    pub fn describe(&self, hash: &str) -> PathBuf {
        let found = parse_hash(hash).and_then(|h| {
            self.inner
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&h)
                .copied()
        });
        match found {
            Some(location) => self.pack_path(location.pack),
            None => self.loose_path(hash),
        }
    }

    /// Reads an artifact, checking its hash.
    ///
    /// # Errors
    /// [`StoreError::Io`] when missing or unreadable, [`StoreError::Corrupt`] when the bytes
    /// no longer match the hash.
    pub fn get(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let lookup = |key: &Key| {
            self.inner
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .copied()
        };
        let key = parse_hash(hash);
        let mut location = key.as_ref().and_then(lookup);
        if location.is_none() && key.is_some() && !self.loose_path(hash).is_file() {
            // Perhaps another process wrote it since we looked.
            self.refresh()?;
            location = key.as_ref().and_then(lookup);
        }
        let (bytes, place) = match location {
            Some(location) => {
                let place = self.pack_path(location.pack);
                let bytes = self.read_at(&location).map_err(|source| StoreError::Io {
                    path: place.clone(),
                    source,
                })?;
                (bytes, place)
            }
            None => {
                let path = self.loose_path(hash);
                let bytes = fs_err::read(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                (bytes, path)
            }
        };
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != hash {
            return Err(StoreError::Corrupt {
                what: "artifact",
                detail: format!("{hash} in `{}` hashes to {actual}", place.display()),
            });
        }
        if let Some(key) = key {
            self.trust(&key);
        }
        Ok(bytes)
    }
}

/// The 32 bytes of a 64-hex-digit hash.
fn parse_hash(hash: &str) -> Option<Key> {
    blake3::Hash::from_hex(hash).ok().map(|h| key(h.as_bytes()))
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
        let packs = pack_files(&store);
        assert_eq!(packs.len(), 1, "{packs:?}");
        let size = std::fs::metadata(&packs[0]).unwrap().len();
        assert_eq!(size, HEADER + 6, "stored once");
    }

    #[test]
    fn another_process_reads_what_was_written_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ArtifactStore::open(dir.path()).unwrap();
        let a = writer.put(b"first image").unwrap();
        writer.sync().unwrap();
        // What a crash mid-record leaves: the start of a record.
        let pack = pack_files(&writer).pop().unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .unwrap();
        file.write_all(b"EDA1\x01\x02").unwrap();
        let reader = ArtifactStore::open(dir.path()).unwrap();
        assert_eq!(reader.get(&a).unwrap(), b"first image");
        // Written (by the next process) after the reader opened: found on a miss.
        let next = ArtifactStore::open(dir.path()).unwrap();
        let b = next.put(b"second image").unwrap();
        assert_eq!(reader.get(&b).unwrap(), b"second image");
        let missing = blake3::hash(b"never stored").to_hex().to_string();
        assert!(matches!(reader.get(&missing), Err(StoreError::Io { .. })));
    }

    #[test]
    fn corruption_is_detected_and_a_put_writes_the_bytes_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hash = store.put(b"original").unwrap();
        store.sync().unwrap();
        let pack = pack_files(&store).pop().unwrap();
        let mut bytes = std::fs::read(&pack).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&pack, &bytes).unwrap();
        let reopened = ArtifactStore::open(dir.path()).unwrap();
        assert!(matches!(
            reopened.get(&hash),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(reopened.put(b"original").unwrap(), hash);
        assert_eq!(reopened.get(&hash).unwrap(), b"original");
    }

    #[test]
    fn files_of_earlier_versions_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hash = blake3::hash(b"loose").to_hex().to_string();
        let path = store.loose_path(&hash);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"loose").unwrap();
        assert_eq!(store.get(&hash).unwrap(), b"loose");
        assert_eq!(store.describe(&hash), path);
    }

    #[test]
    fn sync_makes_what_was_written_durable_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert!(!store.unsynced());
        let copy = store.clone();
        copy.put(b"a").unwrap();
        assert!(store.unsynced());
        store.sync().unwrap();
        assert!(!store.unsynced() && !copy.unsynced());
        store.put(b"a").unwrap();
        assert!(!store.unsynced(), "the same bytes again write nothing");
    }

    #[test]
    fn puts_go_on_while_a_sync_runs_and_the_last_sync_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hashes: Vec<ArtifactHash> = std::thread::scope(|scope| {
            let syncer = store.clone();
            let syncing = scope.spawn(move || {
                for _ in 0..50 {
                    syncer.sync().unwrap();
                }
            });
            let putters: Vec<_> = (0..4u8)
                .map(|t| {
                    let putter = store.clone();
                    scope.spawn(move || {
                        (0..200u32)
                            .map(|i| putter.put(&[&[t], &i.to_le_bytes()[..]].concat()).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            syncing.join().unwrap();
            putters
                .into_iter()
                .flat_map(|p| p.join().unwrap())
                .collect()
        });
        store.sync().unwrap();
        assert!(!store.unsynced());
        let reopened = ArtifactStore::open(dir.path()).unwrap();
        assert_eq!(hashes.len(), 800);
        for hash in &hashes {
            assert_eq!(
                blake3::hash(&reopened.get(hash).unwrap()).to_hex().as_str(),
                hash.as_str()
            );
        }
    }

    fn pack_files(store: &ArtifactStore) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(store.packs_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        out.sort();
        out
    }
}
