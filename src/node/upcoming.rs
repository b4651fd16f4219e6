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

pub struct Wal;

impl Wal {
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, RestoredState), StorageError> {
        let _ = (dir, options);
        todo!("storage::Wal::open")
    }
}

impl LogStore for Wal {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let _ = entries;
        todo!()
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        let _ = hard_state;
        todo!()
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        todo!()
    }
}
