//! Stand-ins for the storage API until `src/storage` lands: the agreed names and
//! signatures, so switching is replacing this file with re-exports.
#![allow(dead_code)]

use crate::raft::{Entry, HardState};
use crate::storage::{LogStore, RestoredState, StorageError};
use std::path::Path;

pub enum FsyncPolicy {
    Always,
    Never,
}

pub struct WalOptions {
    pub segment_bytes_max: u64,
    pub fsync: FsyncPolicy,
}

/// In memory until the real WAL lands: nothing survives a restart.
#[derive(Default)]
pub struct Wal {
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl Wal {
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, RestoredState), StorageError> {
        let _ = (dir, options);
        Ok((Wal::default(), RestoredState::default()))
    }
}

impl LogStore for Wal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        if let Some(first) = entries.first() {
            let keep = usize::try_from(first.index.0 - 1).expect("fits");
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.hard_state = *hard_state;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}
