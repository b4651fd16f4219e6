//! Stand-ins for the queue and storage APIs until `src/queue` and `src/storage` land: the
//! agreed names and signatures, so switching is replacing this file with re-exports.
#![allow(dead_code)]

use crate::protocol::{Outcome, Payload, SessionKey};
use crate::raft::{Entry, HardState, LogIndex};
use crate::storage::{LogStore, RestoredState, StorageError};
use bytes::Bytes;
use std::path::Path;

pub enum Command {
    CreateTopic { topic: String },
    Put { topic: String, message: Payload },
    Get { topic: String },
}

pub struct LoggedCommand {
    pub session: Option<SessionKey>,
    pub command: Command,
}

impl LoggedCommand {
    pub fn encode(&self) -> Bytes {
        todo!("queue::LoggedCommand::encode")
    }
}

pub struct QueueConfig {
    pub sessions_max: usize,
}

pub struct Queue;

impl Queue {
    pub fn new(config: QueueConfig) -> Queue {
        let _ = config;
        todo!("queue::Queue::new")
    }

    pub fn apply(&mut self, index: LogIndex, bytes: &[u8]) -> Outcome {
        let _ = (index, bytes);
        todo!("queue::Queue::apply")
    }

    pub fn topics(&self) -> Vec<String> {
        todo!("queue::Queue::topics")
    }
}

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
