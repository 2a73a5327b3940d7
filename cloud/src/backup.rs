//! Consistent snapshots of the cloud's state (`cema-cloud backup`, `restore`).
//!
//! A snapshot is taken while holding the store's write lock (`store::write_guard`), which
//! every ingest, step commit and registry change holds too: it sees every acknowledged upload
//! (ingest applies to sled before it logs and acknowledges) and no half of any change. Writes
//! wait while the snapshot is written to local disk; sending it over the network happens after.
//!
//! Format `CEMABAK1`: the magic, then records `[tag: u8][length: u32 LE][bytes]` — tag 1 a
//! tree name, 2 a key, 3 its value, 0 the end, whose bytes are the SHA-256 of everything
//! before it. A restore verifies the whole file before it writes anything, and only into an
//! empty folder.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CEMABAK1";
const TAG_END: u8 = 0;
const TAG_TREE: u8 = 1;
const TAG_KEY: u8 = 2;
const TAG_VALUE: u8 = 3;
/// The most bytes one record may claim (a corrupt length must not allocate gigabytes).
const MAX_RECORD_BYTES: usize = 1 << 30;

/// Why a backup or restore failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// sled failed.
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    /// The file is not a complete, intact backup.
    #[error("{path} is not an intact cema-cloud backup: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A restore needs an empty (or absent) folder.
    #[error("{0} is not empty; restore into a new folder (a restore never merges into existing state)")]
    NotEmpty(PathBuf),
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotSummary {
    /// Trees.
    pub trees: u64,
    /// Key–value pairs.
    pub entries: u64,
    /// File size.
    pub bytes: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// Writes a snapshot of `db` to `path` (via a temporary file, fsynced, then renamed).
pub fn snapshot(db: &sled::Db, path: &Path) -> Result<SnapshotSummary, BackupError> {
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut out = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
    let mut summary = SnapshotSummary::default();
    {
        let _writes = crate::store::write_guard();
        out.write_all(MAGIC).map_err(io(&partial))?;
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            record(&mut out, TAG_TREE, &name).map_err(io(&partial))?;
            summary.trees += 1;
            for entry in tree.iter() {
                let (key, value) = entry?;
                record(&mut out, TAG_KEY, &key).map_err(io(&partial))?;
                record(&mut out, TAG_VALUE, &value).map_err(io(&partial))?;
                summary.entries += 1;
            }
        }
    }
    let digest = out.hasher.clone().finalize();
    record(&mut out, TAG_END, &digest).map_err(io(&partial))?;
    summary.bytes = out.bytes;
    let file = out.inner.into_inner().map_err(|e| io(&partial)(e.into_error()))?;
    file.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, path).map_err(io(path))?;
    Ok(summary)
}

/// Checks that `path` is a complete, intact backup.
pub fn verify(path: &Path) -> Result<SnapshotSummary, BackupError> {
    read(path, |_| Ok(()))
}

/// Restores a backup into `data_dir` (absent or empty): its sled state, flushed.
pub fn restore(path: &Path, data_dir: &Path) -> Result<SnapshotSummary, BackupError> {
    if data_dir.exists() && std::fs::read_dir(data_dir).map_err(io(data_dir))?.next().is_some() {
        return Err(BackupError::NotEmpty(data_dir.to_owned()));
    }
    verify(path)?;
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let db = sled::open(data_dir.join("state"))?;
    let mut tree: Option<sled::Tree> = None;
    let mut key: Option<Vec<u8>> = None;
    let summary = read(path, |item| {
        match item {
            Item::Tree(name) => tree = Some(db.open_tree(name)?),
            Item::Key(k) => key = Some(k.to_vec()),
            Item::Value(v) => {
                if let (Some(tree), Some(key)) = (&tree, key.take()) {
                    tree.insert(key, v)?;
                }
            }
        }
        Ok(())
    })?;
    db.flush()?;
    Ok(summary)
}

enum Item<'a> {
    Tree(&'a [u8]),
    Key(&'a [u8]),
    Value(&'a [u8]),
}

/// Reads a backup, checking structure and checksum, handing each item to `each`. With a
/// checksum mismatch `each` has already seen the items: callers verify first.
fn read(
    path: &Path,
    mut each: impl FnMut(Item<'_>) -> Result<(), BackupError>,
) -> Result<SnapshotSummary, BackupError> {
    let corrupt = |detail: String| BackupError::Corrupt { path: path.to_owned(), detail };
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut input = BufReader::new(file);
    let mut hasher = Sha256::new();
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| corrupt("too short".into()))?;
    if &magic != MAGIC {
        return Err(corrupt("wrong magic (not a backup, or another format version)".into()));
    }
    hasher.update(magic);
    let mut summary = SnapshotSummary { bytes: 8, ..Default::default() };
    let mut buffer = Vec::new();
    let mut expect_value = false;
    let mut in_tree = false;
    loop {
        let mut header = [0u8; 5];
        input.read_exact(&mut header).map_err(|_| corrupt("ends without its checksum (truncated)".into()))?;
        let length = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if length > MAX_RECORD_BYTES {
            return Err(corrupt(format!("a record claims {length} bytes")));
        }
        buffer.resize(length, 0);
        input.read_exact(&mut buffer).map_err(|_| corrupt("a record is cut short (truncated)".into()))?;
        summary.bytes += 5 + length as u64;
        if header[0] == TAG_END {
            if expect_value || buffer.as_slice() != hasher.finalize().as_slice() {
                return Err(corrupt("checksum mismatch".into()));
            }
            if input.read(&mut [0u8; 1]).map_err(io(path))? != 0 {
                return Err(corrupt("bytes after the checksum".into()));
            }
            return Ok(summary);
        }
        hasher.update(header);
        hasher.update(&buffer);
        match (header[0], expect_value) {
            (TAG_TREE, false) => {
                in_tree = true;
                summary.trees += 1;
                each(Item::Tree(&buffer))?;
            }
            (TAG_KEY, false) if in_tree => {
                expect_value = true;
                each(Item::Key(&buffer))?;
            }
            (TAG_VALUE, true) => {
                expect_value = false;
                summary.entries += 1;
                each(Item::Value(&buffer))?;
            }
            (tag, _) => return Err(corrupt(format!("unexpected record tag {tag}"))),
        }
    }
}

fn record(out: &mut impl Write, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a record over 4 GiB"))?;
    out.write_all(&[tag])?;
    out.write_all(&length.to_le_bytes())?;
    out.write_all(bytes)
}

/// Hashes what it writes (all but the end record, which carries the hash).
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
