//! Snapshot files: the state machine at a log index, written durably, checked when read.
//!
//! Why it exists: compaction deletes log segments, so the state they produced must be on
//! disk in another form before they go, and a follower too far behind must be sent that form
//! instead of the log. This module owns the files' format, names and life cycle in the data
//! dir: writing one atomically, finding the newest intact one at startup, receiving one in
//! chunks from a leader. It never interprets the body (the state machine's own snapshot
//! stream): callers hand it a writer or a reader.
//!
//! ```text
//! file    = header | body | trailer
//! header  = { magic: [u8; 8] = "RRMQSNAP" | format_version: u32 = 2
//!             | last_term: u64 | last_index: u64                          28 bytes, LE
//!             | membership_len: u32 | membership: [u8; membership_len] }  (version 2 only)
//! body    = the state machine's snapshot stream (opaque here)
//! trailer = { crc32c: u32 }   over header and body                        4 bytes, LE
//! ```
//!
//! The membership (as of `last_index`, in the layout of `codec`'s WAL entries) lets a node
//! whose log was compacted past the membership entries know its cluster after a restart.
//! Version 1 files (no membership) are still read: their membership is empty, "not known",
//! and the core then keeps the one it was created with.
//!
//! A torn or damaged file fails the checksum (the file is read whole before anything in it
//! is trusted). File names in the data dir:
//!
//! ```text
//! snapshot-<index>-<term>.snap       complete, this node's own (the newest two are kept)
//! snapshot-<index>-<term>.snap.tmp   being written; renamed to .snap once fsynced
//! snapshot-<index>-<term>.partial    being received from the leader, chunk by chunk
//! snapshot-<index>-<term>.received   received whole and checked; the node installs it by
//!                                    renaming it to .snap
//! snapshot-<index>-<term>.corrupt    failed its checksum at startup; kept for the operator
//! ```
//!
//! `.tmp`, `.partial` and `.received` files never take effect by themselves: a crash leaves
//! them behind and [`remove_leftovers`] deletes them at startup, so an interrupted write or
//! transfer never leaves half-installed state. (`<index>` and `<term>` are 20-digit
//! zero-padded, so names sort by index.)

use super::io::{DirIo, IoOp, SequentialWriter};
use super::{codec, FsyncPolicy, StorageError};
use crate::raft::{EntryId, LogIndex, SnapshotMeta, Term};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RRMQSNAP";
/// The `format_version` this build writes (it reads 1 too: see the module docs).
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;
/// The first format, without a membership.
const FORMAT_VERSION_1: u32 = 1;
/// Bytes of the header's fixed part: magic, format version, last term and last index.
pub const SNAPSHOT_HEADER_BYTES: u64 = 28;
/// Upper bound on the membership a header may carry (a damaged length must not make a
/// reader allocate gigabytes).
const MEMBERSHIP_BYTES_MAX: u32 = 1024 * 1024;
/// How many first bytes of an incoming file are kept to read its header from.
const HEADER_COLLECT_BYTES: usize =
    SNAPSHOT_HEADER_BYTES as usize + 4 + MEMBERSHIP_BYTES_MAX as usize;
/// Bytes of the trailer: the CRC32C over header and body.
pub const SNAPSHOT_TRAILER_BYTES: u64 = 4;
const PREFIX: &str = "snapshot-";
const COMPLETE_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";
const PARTIAL_SUFFIX: &str = ".partial";
const RECEIVED_SUFFIX: &str = ".received";
const CORRUPT_SUFFIX: &str = ".corrupt";
/// Reads and writes go through buffers of this size: a snapshot is read or written in
/// one sequential pass.
const BUFFER_BYTES: usize = 1024 * 1024;

/// A complete, checked snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The snapshot the file holds (from its header, which matches its name).
    pub meta: SnapshotMeta,
    /// Where the file is.
    pub path: PathBuf,
    /// The file's whole length: header, body and trailer.
    pub len_bytes: u64,
    /// The trailer's checksum, over everything before it.
    pub crc: u32,
}

fn file_name(meta: &SnapshotMeta, suffix: &str) -> String {
    format!(
        "{PREFIX}{:020}-{:020}{suffix}",
        meta.last.index.0, meta.last.term.0
    )
}

/// Where this node's own snapshot at `meta` lives.
pub fn snapshot_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(file_name(meta, COMPLETE_SUFFIX))
}

/// Where a snapshot received whole from a leader waits to be installed.
pub fn received_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(file_name(meta, RECEIVED_SUFFIX))
}

fn partial_path(dir: &Path, meta: &SnapshotMeta) -> PathBuf {
    dir.join(file_name(meta, PARTIAL_SUFFIX))
}

/// Parses `snapshot-<index>-<term><suffix>`.
fn parse_name(name: &str, suffix: &str) -> Option<SnapshotMeta> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(suffix)?;
    let (index, term) = middle.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some(SnapshotMeta::at(EntryId::new(
        Term(term.parse().ok()?),
        LogIndex(index.parse().ok()?),
    )))
}

fn encode_header(meta: &SnapshotMeta) -> Vec<u8> {
    let mut membership = Vec::new();
    codec::encode_membership(&mut membership, &meta.membership);
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES as usize + 4 + membership.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&meta.last.term.0.to_le_bytes());
    header.extend_from_slice(&meta.last.index.0.to_le_bytes());
    let membership_len = u32::try_from(membership.len()).expect("a membership is far below 4 GiB");
    header.extend_from_slice(&membership_len.to_le_bytes());
    header.extend_from_slice(&membership);
    header
}

/// Reads a whole header (the fixed part, then a version 2 membership) from the start of a
/// file of `len_bytes`: the snapshot and the header's bytes (which the checksum covers).
fn read_header(reader: &mut impl Read, len_bytes: u64) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let mut header = vec![0u8; SNAPSHOT_HEADER_BYTES as usize];
    reader
        .read_exact(&mut header)
        .map_err(|error| format!("reading the header: {error}"))?;
    decode_fixed_header(&header)?;
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version == SNAPSHOT_FORMAT_VERSION {
        let mut length = [0u8; 4];
        reader
            .read_exact(&mut length)
            .map_err(|error| format!("reading the membership length: {error}"))?;
        let membership_len = u32::from_le_bytes(length);
        let room = len_bytes.saturating_sub(SNAPSHOT_HEADER_BYTES + 4 + SNAPSHOT_TRAILER_BYTES);
        if membership_len > MEMBERSHIP_BYTES_MAX || u64::from(membership_len) > room {
            return Err(format!(
                "membership of {membership_len} bytes: damaged length"
            ));
        }
        header.extend_from_slice(&length);
        let start = header.len();
        header.resize(start + membership_len as usize, 0);
        reader
            .read_exact(&mut header[start..])
            .map_err(|error| format!("reading the membership: {error}"))?;
    }
    let (meta, _) = decode_header(&header)?;
    Ok((meta, header))
}

/// Checks the fixed part of a header: magic and a known version.
fn decode_fixed_header(header: &[u8]) -> Result<(), String> {
    if header.len() < SNAPSHOT_HEADER_BYTES as usize {
        return Err(format!(
            "only {} bytes, shorter than a header",
            header.len()
        ));
    }
    if &header[0..8] != MAGIC {
        return Err("not a snapshot file (bad magic)".to_string());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_FORMAT_VERSION && version != FORMAT_VERSION_1 {
        return Err(format!(
            "snapshot format {version}, this build reads {FORMAT_VERSION_1} and \
             {SNAPSHOT_FORMAT_VERSION}"
        ));
    }
    Ok(())
}

/// Decodes the header at the start of `bytes` (which may go on with the body): the
/// snapshot and the header's length.
fn decode_header(bytes: &[u8]) -> Result<(SnapshotMeta, usize), String> {
    decode_fixed_header(bytes)?;
    let header = bytes;
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let last = EntryId::new(Term(u64_at(12)), LogIndex(u64_at(20)));
    if version == FORMAT_VERSION_1 {
        return Ok((SnapshotMeta::at(last), SNAPSHOT_HEADER_BYTES as usize));
    }
    let fixed = SNAPSHOT_HEADER_BYTES as usize;
    let Some(length) = header.get(fixed..fixed + 4) else {
        return Err("the header ends before the membership length".to_string());
    };
    let membership_len = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
    let Some(membership) = header.get(fixed + 4..fixed + 4 + membership_len) else {
        return Err(format!(
            "the header ends inside a membership of {membership_len} bytes"
        ));
    };
    let membership = codec::decode_membership_bytes(membership)?;
    Ok((
        SnapshotMeta { last, membership },
        fixed + 4 + membership_len,
    ))
}

/// A damaged snapshot file. No advice is appended: the caller decides what it means (at
/// startup an older snapshot is tried; a damaged transfer is simply sent again).
fn corrupt(path: &Path, offset: u64, reason: String) -> StorageError {
    StorageError::Corrupt {
        file: path.display().to_string(),
        offset,
        reason,
    }
}

fn io_error(path: &Path, action: &str) -> impl FnOnce(io::Error) -> StorageError {
    let what = format!("{action} {}", path.display());
    move |error| StorageError::Io(io::Error::new(error.kind(), format!("{what}: {error}")))
}

/// The data dir as snapshot files are written to it: through [`DirIo`], like the WAL, so
/// the fsync policy and (in tests) fault injection apply to snapshot files too.
fn open_dir(dir: &Path, fsync: FsyncPolicy) -> Result<DirIo, StorageError> {
    DirIo::open(dir, fsync).map_err(io_error(dir, "opening"))
}

/// Makes the names created, renamed or deleted in the dir durable (nothing under `Never`).
fn sync_dir(io: &mut DirIo) -> Result<(), StorageError> {
    let dir = io.dir().to_path_buf();
    io.sync_dir().map_err(io_error(&dir, "syncing"))
}

/// A `Write` that checksums what passes through to `inner`.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A `Read` that checksums what passes through from `inner`.
struct CrcReader<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.crc = crc32c::crc32c_append(self.crc, &buffer[..read]);
        Ok(read)
    }
}

/// Writes a snapshot of the state at `meta` durably: header, the body `write_body` writes,
/// checksum, to `<name>.snap.tmp`; fsync; rename to `<name>.snap`; fsync the directory.
/// When this returns `Ok` (under `FsyncPolicy::Always`) the file survives a power loss.
///
/// Meant for a background thread: it does blocking I/O for as long as the body takes.
pub fn write_snapshot<F>(
    dir: &Path,
    meta: SnapshotMeta,
    fsync: FsyncPolicy,
    write_body: F,
) -> Result<SnapshotFile, StorageError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    write_snapshot_in(&mut open_dir(dir, fsync)?, meta, write_body)
}

/// [`write_snapshot`] through `io` (a test injects faults there). A failure removes the
/// temp file: it never took effect.
pub(crate) fn write_snapshot_in<F>(
    io: &mut DirIo,
    meta: SnapshotMeta,
    write_body: F,
) -> Result<SnapshotFile, StorageError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = io.dir().to_path_buf();
    let path = snapshot_path(&dir, &meta);
    let temp_path = dir.join(file_name(&meta, TEMP_SUFFIX));
    let result = write_temp(io, &temp_path, &meta, write_body).and_then(|written| {
        io.rename(IoOp::SnapshotRename, &temp_path, &path)
            .map_err(io_error(&temp_path, "renaming"))?;
        Ok(written)
    });
    let (len_bytes, crc) = match result {
        Ok(written) => written,
        Err(error) => {
            let _ = io.remove_file(IoOp::SnapshotDelete, &temp_path);
            return Err(error);
        }
    };
    sync_dir(io)?;
    Ok(SnapshotFile {
        meta,
        path,
        len_bytes,
        crc,
    })
}

fn write_temp<F>(
    io: &mut DirIo,
    temp_path: &Path,
    meta: &SnapshotMeta,
    write_body: F,
) -> Result<(u64, u32), StorageError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let file = io
        .create_file(IoOp::SnapshotCreate, temp_path)
        .map_err(io_error(temp_path, "creating"))?;
    // The buffer sits before the checksum, so the checksum runs over large blocks rather
    // than the encoder's many small writes.
    let mut writer = BufWriter::with_capacity(
        BUFFER_BYTES,
        CrcWriter {
            inner: SequentialWriter {
                io: &mut *io,
                op: IoOp::SnapshotWrite,
                file: &file,
                written_bytes: 0,
            },
            crc: 0,
        },
    );
    writer
        .write_all(&encode_header(meta))
        .and_then(|()| write_body(&mut writer))
        .and_then(|()| writer.flush())
        .map_err(io_error(temp_path, "writing"))?;
    let CrcWriter {
        inner: mut sequential,
        crc,
    } = writer
        .into_inner()
        .map_err(|error| io_error(temp_path, "writing")(error.into_error()))?;
    sequential
        .write_all(&crc.to_le_bytes())
        .map_err(io_error(temp_path, "writing"))?;
    let len_bytes = sequential.written_bytes;
    io.sync_all(IoOp::SnapshotSync, &file)
        .map_err(io_error(temp_path, "syncing"))?;
    Ok((len_bytes, crc))
}

/// Reads a snapshot file whole and checks its header, its checksum and that its name
/// matches its header. One sequential pass; nothing is decoded.
pub fn verify_snapshot(path: &Path) -> Result<SnapshotFile, StorageError> {
    let file = File::open(path).map_err(io_error(path, "opening"))?;
    let len_bytes = file
        .metadata()
        .map_err(io_error(path, "reading the size of"))?
        .len();
    if len_bytes < SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES {
        return Err(corrupt(path, 0, format!("only {len_bytes} bytes: torn")));
    }
    let mut reader = BufReader::with_capacity(BUFFER_BYTES, file);
    let (meta, header) =
        read_header(&mut reader, len_bytes).map_err(|reason| corrupt(path, 0, reason))?;
    check_name(path, &meta)?;
    let mut crc = crc32c::crc32c(&header);
    let mut body = (&mut reader).take(len_bytes - header.len() as u64 - SNAPSHOT_TRAILER_BYTES);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = body.read(&mut buffer).map_err(io_error(path, "reading"))?;
        if read == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
    }
    let stored = read_trailer(&mut reader, path)?;
    if stored != crc {
        return Err(corrupt(
            path,
            len_bytes - SNAPSHOT_TRAILER_BYTES,
            format!(
                "checksum mismatch (stored {stored:#010x}, computed {crc:#010x}): torn or damaged"
            ),
        ));
    }
    Ok(SnapshotFile {
        meta,
        path: path.to_path_buf(),
        len_bytes,
        crc,
    })
}

fn read_trailer(reader: &mut impl Read, path: &Path) -> Result<u32, StorageError> {
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES as usize];
    reader
        .read_exact(&mut trailer)
        .map_err(io_error(path, "reading"))?;
    Ok(u32::from_le_bytes(trailer))
}

/// A file named for one snapshot must hold that snapshot.
fn check_name(path: &Path, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    let named = [COMPLETE_SUFFIX, RECEIVED_SUFFIX, PARTIAL_SUFFIX]
        .iter()
        .find_map(|suffix| parse_name(name, suffix));
    match named {
        Some(named) if named.last != meta.last => Err(corrupt(
            path,
            0,
            format!("named for snapshot {} but holds {}", named.last, meta.last),
        )),
        _ => Ok(()),
    }
}

/// Reads the body of the snapshot file at `path` through `read_body`, which gets a reader
/// that ends where the body ends. The checksum is computed on the way and checked at the end:
/// a mismatch is an error even if `read_body` succeeded, and its result is dropped.
///
/// `read_body` may see damaged bytes before the mismatch is found: run [`verify_snapshot`]
/// first unless the file was just checked (a received one) or the decoder is safe on
/// arbitrary input.
pub fn read_snapshot<T, F>(path: &Path, read_body: F) -> Result<(SnapshotFile, T), StorageError>
where
    F: FnOnce(&mut dyn Read) -> Result<T, String>,
{
    let mut file = File::open(path).map_err(io_error(path, "opening"))?;
    let len_bytes = file
        .metadata()
        .map_err(io_error(path, "reading the size of"))?
        .len();
    if len_bytes < SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES {
        return Err(corrupt(path, 0, format!("only {len_bytes} bytes: torn")));
    }
    let (meta, header) =
        read_header(&mut file, len_bytes).map_err(|reason| corrupt(path, 0, reason))?;
    check_name(path, &meta)?;
    let body_bytes = len_bytes - header.len() as u64 - SNAPSHOT_TRAILER_BYTES;
    // The checksum sits below the buffer, so it runs over large blocks; whatever the buffer
    // read ahead is checksummed too, and the rest is drained below.
    let mut body = BufReader::with_capacity(
        BUFFER_BYTES,
        CrcReader {
            inner: file.take(body_bytes),
            crc: crc32c::crc32c(&header),
        },
    );
    let decoded = read_body(&mut body);
    io::copy(&mut body, &mut io::sink()).map_err(io_error(path, "reading"))?;
    let CrcReader { inner, crc } = body.into_inner();
    let mut file = inner.into_inner();
    let stored = read_trailer(&mut file, path)?;
    if stored != crc {
        return Err(corrupt(
            path,
            len_bytes - SNAPSHOT_TRAILER_BYTES,
            format!(
                "checksum mismatch (stored {stored:#010x}, computed {crc:#010x}): torn or damaged"
            ),
        ));
    }
    let decoded = decoded.map_err(|reason| {
        corrupt(
            path,
            SNAPSHOT_HEADER_BYTES,
            format!("the checksum matches but the body does not decode: {reason}"),
        )
    })?;
    Ok((
        SnapshotFile {
            meta,
            path: path.to_path_buf(),
            len_bytes,
            crc,
        },
        decoded,
    ))
}

/// This node's complete snapshot files (`.snap`), newest first. Not checked: see
/// [`verify_snapshot`].
pub fn list_snapshots(dir: &Path) -> Result<Vec<(SnapshotMeta, PathBuf)>, StorageError> {
    let mut found = Vec::new();
    for dir_entry in std::fs::read_dir(dir).map_err(io_error(dir, "listing"))? {
        let dir_entry = dir_entry.map_err(io_error(dir, "listing"))?;
        let name = dir_entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(meta) = parse_name(name, COMPLETE_SUFFIX) {
            found.push((meta, dir_entry.path()));
        }
    }
    found.sort_by_key(|(meta, _)| std::cmp::Reverse(meta.last));
    Ok(found)
}

/// Deletes what interrupted writes and transfers left behind (`.snap.tmp`, `.partial`,
/// `.received`): none of them ever took effect. Returns how many were deleted.
pub fn remove_leftovers(dir: &Path, fsync: FsyncPolicy) -> Result<usize, StorageError> {
    let mut io = open_dir(dir, fsync)?;
    let mut removed = 0;
    for dir_entry in std::fs::read_dir(dir).map_err(io_error(dir, "listing"))? {
        let dir_entry = dir_entry.map_err(io_error(dir, "listing"))?;
        let name = dir_entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let leftover = [TEMP_SUFFIX, PARTIAL_SUFFIX, RECEIVED_SUFFIX]
            .iter()
            .any(|suffix| parse_name(name, suffix).is_some());
        if leftover {
            let path = dir_entry.path();
            io.remove_file(IoOp::SnapshotDelete, &path)
                .map_err(io_error(&path, "deleting"))?;
            log::info!(
                "removed {}, left by an interrupted snapshot write or transfer",
                path.display()
            );
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(&mut io)?;
    }
    Ok(removed)
}

/// Deletes all but the newest `keep` snapshot files, and any `.received` file at or below
/// the newest (it can no longer be installed). Returns how many files were deleted.
pub fn retain_newest(dir: &Path, keep: usize, fsync: FsyncPolicy) -> Result<usize, StorageError> {
    let mut io = open_dir(dir, fsync)?;
    let snapshots = list_snapshots(dir)?;
    let mut removed = 0;
    for (_, path) in snapshots.iter().skip(keep) {
        io.remove_file(IoOp::SnapshotDelete, path)
            .map_err(io_error(path, "deleting"))?;
        removed += 1;
    }
    if let Some((newest, _)) = snapshots.first() {
        for dir_entry in std::fs::read_dir(dir).map_err(io_error(dir, "listing"))? {
            let dir_entry = dir_entry.map_err(io_error(dir, "listing"))?;
            let name = dir_entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if parse_name(name, RECEIVED_SUFFIX).is_some_and(|meta| meta.index() <= newest.index())
            {
                let path = dir_entry.path();
                io.remove_file(IoOp::SnapshotDelete, &path)
                    .map_err(io_error(&path, "deleting"))?;
                removed += 1;
            }
        }
    }
    if removed > 0 {
        sync_dir(&mut io)?;
    }
    Ok(removed)
}

/// Renames a snapshot file that failed its checks to `<name>.corrupt`, so it is no longer
/// taken for a snapshot (nor counted among the newest two) but stays for the operator. The
/// rename is not synced: if a crash undoes it, the file fails its checks again.
pub fn quarantine(path: &Path) -> Result<PathBuf, StorageError> {
    let mut name = path.as_os_str().to_owned();
    name.push(CORRUPT_SUFFIX);
    let target = PathBuf::from(name);
    let dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    open_dir(dir, FsyncPolicy::Never)?
        .rename(IoOp::SnapshotRename, path, &target)
        .map_err(io_error(path, "renaming"))?;
    Ok(target)
}

/// Makes a received snapshot this node's own: renames `<name>.received` to `<name>.snap`
/// and fsyncs the directory. Durable when this returns (under `FsyncPolicy::Always`).
pub fn adopt_received(
    dir: &Path,
    meta: SnapshotMeta,
    fsync: FsyncPolicy,
) -> Result<PathBuf, StorageError> {
    let mut io = open_dir(dir, fsync)?;
    let from = received_path(dir, &meta);
    let to = snapshot_path(dir, &meta);
    io.rename(IoOp::SnapshotRename, &from, &to)
        .map_err(io_error(&from, "renaming"))?;
    sync_dir(&mut io)?;
    Ok(to)
}

/// A snapshot file arriving from a leader in chunks: appended to `<name>.partial` (memory
/// stays bounded by one chunk plus a write buffer), checked whole by
/// [`IncomingSnapshot::finish`], and only then renamed to `<name>.received`. Dropped
/// unfinished, the partial file is deleted.
pub struct IncomingSnapshot {
    io: DirIo,
    meta: SnapshotMeta,
    path: PathBuf,
    /// `None` once `finish` took it.
    file: Option<File>,
    /// Appended bytes not yet written to `file` (at most about `BUFFER_BYTES`).
    buffer: Vec<u8>,
    written_bytes: u64,
    /// The first bytes (at most `HEADER_COLLECT_BYTES`), which hold the whole header.
    header: Vec<u8>,
    /// The checksum of everything written except the last (up to) 4 bytes, held back in
    /// `tail` because they may be the trailer.
    crc: u32,
    tail: Vec<u8>,
}

impl IncomingSnapshot {
    /// Starts receiving the snapshot at `meta` into `dir`, replacing any partial file of it.
    pub fn create(
        dir: &Path,
        meta: SnapshotMeta,
        fsync: FsyncPolicy,
    ) -> Result<IncomingSnapshot, StorageError> {
        IncomingSnapshot::create_in(open_dir(dir, fsync)?, meta)
    }

    /// [`IncomingSnapshot::create`] through `io` (a test injects faults there).
    pub(crate) fn create_in(
        mut io: DirIo,
        meta: SnapshotMeta,
    ) -> Result<IncomingSnapshot, StorageError> {
        let path = partial_path(io.dir(), &meta);
        let file = io
            .create_file(IoOp::SnapshotCreate, &path)
            .map_err(io_error(&path, "creating"))?;
        Ok(IncomingSnapshot {
            io,
            meta,
            path,
            file: Some(file),
            buffer: Vec::new(),
            written_bytes: 0,
            header: Vec::with_capacity(SNAPSHOT_HEADER_BYTES as usize),
            crc: 0,
            tail: Vec::with_capacity(8),
        })
    }

    /// The snapshot being received.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes appended so far.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Appends the next bytes of the file.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        if self.file.is_none() {
            return Err(StorageError::Invalid("append after finish".to_string()));
        }
        self.buffer.extend_from_slice(bytes);
        self.written_bytes += bytes.len() as u64;
        if self.buffer.len() >= BUFFER_BYTES {
            self.write_buffer()?;
        }
        let header_missing = HEADER_COLLECT_BYTES.saturating_sub(self.header.len());
        self.header
            .extend_from_slice(&bytes[..header_missing.min(bytes.len())]);
        // Checksum all but the last 4 bytes seen so far.
        let hold = SNAPSHOT_TRAILER_BYTES as usize;
        if bytes.len() >= hold {
            self.crc = crc32c::crc32c_append(self.crc, &self.tail);
            self.crc = crc32c::crc32c_append(self.crc, &bytes[..bytes.len() - hold]);
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - hold..]);
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(hold);
            self.crc = crc32c::crc32c_append(self.crc, &self.tail[..excess]);
            self.tail.drain(..excess);
        }
        Ok(())
    }

    /// Checks the whole file (length, header, checksum, and the checksum the sender
    /// announced), fsyncs it and renames it to `<name>.received`. Returns that path.
    pub fn finish(
        mut self,
        expected_bytes: u64,
        expected_crc: u32,
    ) -> Result<PathBuf, StorageError> {
        let path = self.path.clone();
        if self.written_bytes != expected_bytes {
            return Err(corrupt(
                &path,
                self.written_bytes,
                format!(
                    "{} bytes received, {expected_bytes} announced",
                    self.written_bytes
                ),
            ));
        }
        let (meta, _) = decode_header(&self.header).map_err(|reason| corrupt(&path, 0, reason))?;
        if meta.last != self.meta.last {
            return Err(corrupt(
                &path,
                0,
                format!(
                    "announced as snapshot {} but holds {}",
                    self.meta.last, meta.last
                ),
            ));
        }
        let stored = match <[u8; 4]>::try_from(self.tail.as_slice()) {
            Ok(trailer) => u32::from_le_bytes(trailer),
            Err(_) => return Err(corrupt(&path, 0, "no trailer".to_string())),
        };
        if stored != self.crc || stored != expected_crc {
            return Err(corrupt(
                &path,
                self.written_bytes - SNAPSHOT_TRAILER_BYTES,
                format!(
                    "checksum mismatch (stored {stored:#010x}, computed {:#010x}, announced \
                     {expected_crc:#010x})",
                    self.crc
                ),
            ));
        }
        self.write_buffer()?;
        let file = self
            .file
            .take()
            .expect("finish is called once: it consumes self");
        self.io
            .sync_all(IoOp::SnapshotSync, &file)
            .map_err(io_error(&path, "syncing"))?;
        drop(file);
        let received = received_path(self.io.dir(), &self.meta);
        self.io
            .rename(IoOp::SnapshotRename, &path, &received)
            .map_err(io_error(&path, "renaming"))?;
        sync_dir(&mut self.io)?;
        Ok(received)
    }

    /// Writes the buffered bytes at the end of the partial file.
    fn write_buffer(&mut self) -> Result<(), StorageError> {
        let Some(file) = self.file.as_ref() else {
            return Err(StorageError::Invalid("append after finish".to_string()));
        };
        let offset = self.written_bytes - self.buffer.len() as u64;
        self.io
            .write_all_at(IoOp::SnapshotWrite, file, &self.buffer, offset)
            .map_err(io_error(&self.path, "writing"))?;
        self.buffer.clear();
        Ok(())
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        // Unfinished or failed: the partial file must never be mistaken for a snapshot.
        drop(self.file.take());
        match self.io.remove_file(IoOp::SnapshotDelete, &self.path) {
            Ok(()) => log::debug!("discarded {}", self.path.display()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => log::warn!("cannot delete {}: {error}", self.path.display()),
        }
    }
}

/// Reads the header and trailer of a complete snapshot file, for sending it: its snapshot,
/// length and checksum. The body is not checked here (the receiver checks it whole).
pub fn open_for_sending(path: &Path) -> Result<(File, SnapshotFile), StorageError> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).map_err(io_error(path, "opening"))?;
    let len_bytes = file
        .metadata()
        .map_err(io_error(path, "reading the size of"))?
        .len();
    if len_bytes < SNAPSHOT_HEADER_BYTES + SNAPSHOT_TRAILER_BYTES {
        return Err(corrupt(path, 0, format!("only {len_bytes} bytes: torn")));
    }
    let (meta, _) =
        read_header(&mut &file, len_bytes).map_err(|reason| corrupt(path, 0, reason))?;
    check_name(path, &meta)?;
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES as usize];
    file.read_exact_at(&mut trailer, len_bytes - SNAPSHOT_TRAILER_BYTES)
        .map_err(io_error(path, "reading"))?;
    let snapshot = SnapshotFile {
        meta,
        path: path.to_path_buf(),
        len_bytes,
        crc: u32::from_le_bytes(trailer),
    };
    Ok((file, snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::tests::Fault;

    fn meta(term: u64, index: u64) -> SnapshotMeta {
        SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)))
    }

    fn body(length: usize) -> Vec<u8> {
        (0..length).map(|n| (n * 7 + n / 251) as u8).collect()
    }

    fn write(dir: &Path, snapshot: SnapshotMeta, bytes: &[u8]) -> SnapshotFile {
        write_snapshot(dir, snapshot, FsyncPolicy::Always, |writer| {
            writer.write_all(bytes)
        })
        .expect("write a snapshot")
    }

    fn read_all(path: &Path) -> Result<(SnapshotFile, Vec<u8>), StorageError> {
        read_snapshot(path, |reader| {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map_err(|error| error.to_string())?;
            Ok(bytes)
        })
    }

    /// A header with a membership of `voters` (ids 0, 1, ...) and a retired id.
    fn header_with(voters: &[bool]) -> Vec<u8> {
        let membership = crate::raft::Membership {
            members: voters
                .iter()
                .enumerate()
                .map(|(id, voter)| crate::raft::Member {
                    id: crate::raft::NodeId(id as u64),
                    voter: *voter,
                    info: bytes::Bytes::from_static(b"info"),
                })
                .collect(),
            retired: vec![crate::raft::NodeId(9)],
        };
        encode_header(&SnapshotMeta {
            membership,
            ..meta(3, 40)
        })
    }

    proptest::proptest! {
        /// A header is hostile input: a received snapshot's comes from the network, and a
        /// forger can make its checksum right. Decoding never panics, and a membership it
        /// yields keeps the invariants (sorted unique ids, no member retired, a voter).
        #[test]
        fn hostile_headers_never_panic_nor_yield_an_ill_formed_membership(
            voters in proptest::collection::vec(proptest::prelude::any::<bool>(), 0..4),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(),
                 proptest::prelude::any::<u8>()),
                0..4,
            ),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
            truncate in proptest::prelude::any::<bool>(),
        ) {
            let mut header = header_with(&voters);
            // Edit only the membership part: the fixed part's damage is covered elsewhere.
            let fixed = SNAPSHOT_HEADER_BYTES as usize;
            for (at, value) in edits {
                let at = fixed + at.index(header.len() - fixed);
                header[at] = value;
            }
            if truncate {
                header.truncate(cut.index(header.len() + 1));
            }
            if let Ok((decoded, _)) = decode_header(&header) {
                proptest::prop_assert_eq!(decoded.membership.check_well_formed(), Ok(()));
            }
        }

        #[test]
        fn random_headers_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let mut header = header_with(&[true]);
            header.truncate(SNAPSHOT_HEADER_BYTES as usize);
            header.extend_from_slice(&bytes);
            if let Ok((decoded, _)) = decode_header(&header) {
                proptest::prop_assert_eq!(decoded.membership.check_well_formed(), Ok(()));
            }
        }
    }

    #[test]
    fn a_file_with_a_forged_membership_and_a_matching_checksum_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        // No voter: every learner.
        let header = header_with(&[false, false]);
        let mut file = header.clone();
        file.extend_from_slice(b"body");
        let crc = crc32c::crc32c(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        let path = snapshot_path(dir.path(), &meta(3, 40));
        std::fs::write(&path, &file).expect("write the forged file");
        let error = verify_snapshot(&path).expect_err("a forged membership verified");
        assert!(error.to_string().contains("no voter"), "{error}");
        assert!(read_all(&path).is_err());
    }

    #[test]
    fn the_membership_round_trips_and_version_1_files_are_still_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let membership =
            crate::raft::Membership::from_voters([crate::raft::NodeId(1), crate::raft::NodeId(2)])
                .with_learner(
                    crate::raft::NodeId(3),
                    bytes::Bytes::from_static(b"10.0.0.3:7000"),
                )
                .without(crate::raft::NodeId(1));
        let with_membership = SnapshotMeta {
            membership: membership.clone(),
            ..meta(3, 40)
        };
        let written = write(dir.path(), with_membership.clone(), b"body");
        assert_eq!(written.meta, with_membership);
        assert_eq!(
            verify_snapshot(&written.path).expect("verify").meta,
            with_membership
        );
        let (read, body) = read_all(&written.path).expect("read");
        assert_eq!(read.meta.membership, membership);
        assert_eq!(body, b"body");
        assert_eq!(
            open_for_sending(&written.path).expect("open").1.meta,
            with_membership
        );
        // A file in the first format: header without a membership, same checksum scheme.
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&FORMAT_VERSION_1.to_le_bytes());
        v1.extend_from_slice(&3u64.to_le_bytes());
        v1.extend_from_slice(&50u64.to_le_bytes());
        v1.extend_from_slice(b"old body");
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let path = snapshot_path(dir.path(), &meta(3, 50));
        std::fs::write(&path, &v1).expect("write v1");
        let (read, body) = read_all(&path).expect("a version 1 file reads");
        assert_eq!(read.meta, meta(3, 50));
        assert!(read.meta.membership.is_empty());
        assert_eq!(body, b"old body");
    }

    #[test]
    fn round_trip() {
        for (case, length) in [0usize, 1, 5, 100_000, 3 * BUFFER_BYTES + 17]
            .iter()
            .enumerate()
        {
            let dir = tempfile::tempdir().expect("a temp dir");
            let bytes = body(*length);
            let written = write(dir.path(), meta(3, 40), &bytes);
            assert_eq!(
                written.path,
                snapshot_path(dir.path(), &meta(3, 40)),
                "case {case}"
            );
            assert_eq!(
                written.len_bytes,
                encode_header(&meta(3, 40)).len() as u64 + SNAPSHOT_TRAILER_BYTES + *length as u64,
                "case {case}"
            );
            assert_eq!(
                verify_snapshot(&written.path).expect("verify"),
                written,
                "case {case}"
            );
            let (read, read_bytes) = read_all(&written.path).expect("read");
            assert_eq!(read, written, "case {case}");
            assert!(read_bytes == bytes, "case {case}: body differs");
            let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
            assert_eq!(leftovers, 1, "case {case}: only the snapshot, no temp file");
        }
    }

    #[test]
    fn a_decoder_that_stops_early_still_gets_the_checksum_checked() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let written = write(dir.path(), meta(1, 1), &body(10_000));
        let mut bytes = std::fs::read(&written.path).expect("read");
        bytes[9_000] ^= 0x10; // past what the decoder reads
        std::fs::write(&written.path, &bytes).expect("write");
        let result = read_snapshot(&written.path, |reader| {
            let mut first = [0u8; 10];
            reader
                .read_exact(&mut first)
                .map_err(|error| error.to_string())?;
            Ok(first)
        });
        assert!(
            matches!(result, Err(StorageError::Corrupt { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn torn_files_are_detected() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let written = write(dir.path(), meta(2, 9), &body(5000));
        let whole = std::fs::read(&written.path).expect("read");
        for (case, length) in [0, 3, 27, 28, 31, 32, 100, 4000, whole.len() - 1]
            .iter()
            .enumerate()
        {
            std::fs::write(&written.path, &whole[..*length]).expect("write");
            let verified = verify_snapshot(&written.path);
            assert!(
                matches!(verified, Err(StorageError::Corrupt { .. })),
                "case {case}: {length} bytes passed verification: {verified:?}"
            );
            let read = read_all(&written.path);
            assert!(
                matches!(read, Err(StorageError::Corrupt { .. })),
                "case {case}: {length} bytes read back: {:?}",
                read.map(|(file, _)| file)
            );
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let written = write(dir.path(), meta(2, 9), &body(300));
        let whole = std::fs::read(&written.path).expect("read");
        for bit in 0..whole.len() * 8 {
            let mut damaged = whole.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&written.path, &damaged).expect("write");
            assert!(
                verify_snapshot(&written.path).is_err(),
                "bit {bit} flipped went unnoticed by verify"
            );
            assert!(
                read_all(&written.path).is_err(),
                "bit {bit} flipped went unnoticed by read"
            );
        }
    }

    #[test]
    fn a_file_renamed_to_another_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let written = write(dir.path(), meta(2, 9), &body(10));
        let other = snapshot_path(dir.path(), &meta(2, 10));
        std::fs::rename(&written.path, &other).expect("rename");
        assert!(matches!(
            verify_snapshot(&other),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn listing_retention_and_leftovers() {
        let dir = tempfile::tempdir().expect("a temp dir");
        for index in [5u64, 30, 12, 7] {
            write(dir.path(), meta(1, index), &body(10));
        }
        // Leftovers of interrupted work, and files that are not snapshots at all.
        let leftovers = [
            dir.path().join(file_name(&meta(1, 40), TEMP_SUFFIX)),
            partial_path(dir.path(), &meta(2, 50)),
            received_path(dir.path(), &meta(2, 60)),
        ];
        for path in &leftovers {
            std::fs::write(path, b"half").expect("write");
        }
        std::fs::write(dir.path().join("segment-00000000000000000001.wal"), b"").expect("write");
        std::fs::write(dir.path().join("snapshot-junk.snap"), b"").expect("write");
        let listed: Vec<u64> = list_snapshots(dir.path())
            .expect("list")
            .iter()
            .map(|(meta, _)| meta.index().0)
            .collect();
        assert_eq!(listed, vec![30, 12, 7, 5], "newest first");
        assert_eq!(
            remove_leftovers(dir.path(), FsyncPolicy::Always).expect("remove"),
            3
        );
        for path in &leftovers {
            assert!(!path.exists(), "{} survived", path.display());
        }
        // A received file at or below the newest snapshot is useless and goes too.
        std::fs::write(received_path(dir.path(), &meta(1, 29)), b"old").expect("write");
        std::fs::write(received_path(dir.path(), &meta(3, 31)), b"new").expect("write");
        assert_eq!(
            retain_newest(dir.path(), 2, FsyncPolicy::Always).expect("retain"),
            3
        );
        let listed: Vec<u64> = list_snapshots(dir.path())
            .expect("list")
            .iter()
            .map(|(meta, _)| meta.index().0)
            .collect();
        assert_eq!(listed, vec![30, 12]);
        assert!(received_path(dir.path(), &meta(3, 31)).exists());
        assert!(!received_path(dir.path(), &meta(1, 29)).exists());
        let quarantined = quarantine(&snapshot_path(dir.path(), &meta(1, 30))).expect("rename");
        assert!(quarantined.exists());
        let listed = list_snapshots(dir.path()).expect("list");
        assert_eq!(
            listed.len(),
            1,
            "a quarantined file is no longer a snapshot"
        );
    }

    /// Feeds a complete file into an `IncomingSnapshot` in chunks of `chunk` bytes.
    fn receive(dir: &Path, file: &SnapshotFile, chunk: usize) -> Result<PathBuf, StorageError> {
        let bytes = std::fs::read(&file.path).expect("read");
        let mut incoming =
            IncomingSnapshot::create(dir, file.meta.clone(), FsyncPolicy::Always).expect("create");
        for piece in bytes.chunks(chunk) {
            incoming.append(piece)?;
        }
        incoming.finish(file.len_bytes, file.crc)
    }

    #[test]
    fn a_snapshot_received_in_chunks_of_any_size_is_checked_and_renamed() {
        let source = tempfile::tempdir().expect("a temp dir");
        let written = write(source.path(), meta(4, 77), &body(10_000));
        for chunk in [1usize, 2, 3, 4, 5, 28, 29, 1000, 100_000] {
            let dir = tempfile::tempdir().expect("a temp dir");
            let received = receive(dir.path(), &written, chunk).expect("receive");
            assert_eq!(
                received,
                received_path(dir.path(), &written.meta),
                "chunk {chunk}"
            );
            assert_eq!(
                std::fs::read(&received).expect("read"),
                std::fs::read(&written.path).expect("read"),
                "chunk {chunk}"
            );
            assert!(
                !partial_path(dir.path(), &written.meta).exists(),
                "chunk {chunk}"
            );
            let adopted = adopt_received(dir.path(), written.meta.clone(), FsyncPolicy::Always)
                .expect("adopt");
            assert_eq!(verify_snapshot(&adopted).expect("verify").crc, written.crc);
        }
    }

    #[test]
    fn a_damaged_or_short_transfer_leaves_nothing_behind() {
        let source = tempfile::tempdir().expect("a temp dir");
        let written = write(source.path(), meta(4, 77), &body(5_000));
        let bytes = std::fs::read(&written.path).expect("read");
        struct Case {
            name: &'static str,
            bytes: Vec<u8>,
            announced_bytes: u64,
            announced_crc: u32,
        }
        let mut flipped = bytes.clone();
        flipped[2000] ^= 1;
        let cases = [
            Case {
                name: "a flipped bit",
                bytes: flipped,
                announced_bytes: written.len_bytes,
                announced_crc: written.crc,
            },
            Case {
                name: "a missing chunk",
                bytes: [&bytes[..1000], &bytes[2000..]].concat(),
                announced_bytes: written.len_bytes,
                announced_crc: written.crc,
            },
            Case {
                name: "another checksum announced",
                bytes: bytes.clone(),
                announced_bytes: written.len_bytes,
                announced_crc: written.crc ^ 1,
            },
        ];
        for case in cases {
            let dir = tempfile::tempdir().expect("a temp dir");
            let mut incoming =
                IncomingSnapshot::create(dir.path(), written.meta.clone(), FsyncPolicy::Never)
                    .expect("create");
            for piece in case.bytes.chunks(700) {
                incoming.append(piece).expect("append");
            }
            let result = incoming.finish(case.announced_bytes, case.announced_crc);
            assert!(
                matches!(result, Err(StorageError::Corrupt { .. })),
                "{}: {result:?}",
                case.name
            );
            let left = std::fs::read_dir(dir.path()).expect("list").count();
            assert_eq!(left, 0, "{}: files left behind", case.name);
        }
        // Abandoned half way (a leader change): dropping it deletes the partial file.
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut incoming =
            IncomingSnapshot::create(dir.path(), written.meta.clone(), FsyncPolicy::Never)
                .expect("create");
        incoming.append(&bytes[..100]).expect("append");
        assert!(partial_path(dir.path(), &written.meta).exists());
        drop(incoming);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    /// The names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_fsync_or_rename_leaves_no_snapshot() {
        // Snapshot files go through `DirIo` like the WAL, so the same faults apply.
        let cases = [
            (IoOp::SnapshotCreate, None),
            (IoOp::SnapshotWrite, Some(10)),
            (IoOp::SnapshotSync, None),
            (IoOp::SnapshotRename, None),
        ];
        for (number, (op, partial_bytes)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().expect("a temp dir");
            let mut io = DirIo::open(dir.path(), FsyncPolicy::Always).expect("open");
            io.faults.inject(Fault {
                op,
                skip: 0,
                partial_bytes,
            });
            let result =
                write_snapshot_in(&mut io, meta(1, 5), |writer| writer.write_all(&body(100)));
            assert!(
                matches!(result, Err(StorageError::Io(_))),
                "case {number} ({op:?}): {result:?}"
            );
            assert!(
                io.faults.count(op) > 0,
                "case {number} ({op:?}): not reached"
            );
            assert_eq!(
                names(dir.path()),
                Vec::<String>::new(),
                "case {number} ({op:?})"
            );
        }
    }

    #[test]
    fn a_failed_fsync_or_rename_of_a_received_snapshot_leaves_nothing_behind() {
        let source = tempfile::tempdir().expect("a temp dir");
        let written = write(source.path(), meta(2, 9), &body(5000));
        let bytes = std::fs::read(&written.path).expect("read");
        for (number, op) in [
            IoOp::SnapshotWrite,
            IoOp::SnapshotSync,
            IoOp::SnapshotRename,
        ]
        .into_iter()
        .enumerate()
        {
            let dir = tempfile::tempdir().expect("a temp dir");
            let mut io = DirIo::open(dir.path(), FsyncPolicy::Always).expect("open");
            io.faults.inject(Fault {
                op,
                skip: 0,
                partial_bytes: None,
            });
            let mut incoming =
                IncomingSnapshot::create_in(io, written.meta.clone()).expect("create");
            let result = incoming
                .append(&bytes)
                .and_then(|()| incoming.finish(written.len_bytes, written.crc));
            assert!(
                matches!(result, Err(StorageError::Io(_))),
                "case {number} ({op:?}): {result:?}"
            );
            assert_eq!(
                names(dir.path()),
                Vec::<String>::new(),
                "case {number} ({op:?})"
            );
        }
    }

    #[test]
    fn open_for_sending_reads_header_and_trailer() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let written = write(dir.path(), meta(6, 60), &body(1000));
        let (_, opened) = open_for_sending(&written.path).expect("open");
        assert_eq!(opened, written);
    }
}
