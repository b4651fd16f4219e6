//! The `hard_state` file: term, vote and commit, replaced atomically.
//!
//! Term and vote must never be half-written: a node that forgets its vote may vote twice in
//! one term (Raft §5.2). So a new hard state goes to `hard_state.tmp`, which is fsynced, then
//! renamed over `hard_state`, and the directory is fsynced so the rename itself survives a
//! crash. Whatever the crash point, `hard_state` holds either the old or the new state.
//! This module owns only that file; it never touches the log segments.

use super::codec;
use super::io::{DirIo, IoOp};
use super::StorageError;
use crate::raft::HardState;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;

pub(crate) const FILE_NAME: &str = "hard_state";
const TEMP_FILE_NAME: &str = "hard_state.tmp";

/// Reads the hard state, `None` if the file does not exist (a new data dir). A file that
/// does not decode is corruption: renames are atomic, so no crash can leave it torn.
pub(crate) fn read(dir: &Path) -> Result<Option<HardState>, StorageError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StorageError::Io(io::Error::new(
                error.kind(),
                format!("reading {}: {error}", path.display()),
            )))
        }
    };
    codec::decode_hard_state(&bytes)
        .map(Some)
        .map_err(|reason| StorageError::corrupt(&path, 0, reason))
}

/// Removes a `hard_state.tmp` left by a crash before its rename: it was never in force.
pub(crate) fn remove_stale_temp(io: &mut DirIo) -> io::Result<()> {
    let path = io.dir().join(TEMP_FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            log::info!(
                "removed {}, left by a crash before it took effect",
                path.display()
            );
            io.sync_dir()
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Replaces the hard state: durable when this returns under `FsyncPolicy::Always`.
pub(crate) fn write(io: &mut DirIo, hard_state: &HardState) -> io::Result<()> {
    let temp_path = io.dir().join(TEMP_FILE_NAME);
    let path = io.dir().join(FILE_NAME);
    let bytes = codec::encode_hard_state(hard_state);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)?;
    io.write_all_at(IoOp::HardStateWrite, &file, &bytes, 0)?;
    io.sync_data(IoOp::HardStateSync, &file, 0)?;
    drop(file);
    io.rename(IoOp::HardStateRename, &temp_path, &path)?;
    io.sync_dir()
}
