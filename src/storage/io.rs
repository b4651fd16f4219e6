//! The few file operations the WAL makes, in one place: every write, fsync, create, rename
//! and delete goes through [`DirIo`], which applies the fsync policy and, in tests, injects
//! faults.
//!
//! Fault injection exists because the failures that matter (a full disk, a failed fsync)
//! cannot be provoked for real in a test: root ignores permissions, and a failed fsync needs
//! a failing device. Under `#[cfg(test)]` a [`Fault`] makes the n-th operation of one kind
//! fail the way the kernel would, and every operation is counted so tests can pin "one write
//! and one fsync per batch". Release builds carry none of it.

use super::wal::FsyncPolicy;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The kinds of operation a test can fail or count. (Some are named only by tests.)
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IoOp {
    SegmentCreate,
    SegmentWrite,
    SegmentSync,
    SegmentDelete,
    DirSync,
    HardStateWrite,
    HardStateSync,
    HardStateRename,
}

/// The data dir as the WAL writes to it.
pub(crate) struct DirIo {
    dir: PathBuf,
    /// Opened read-only to fsync the directory itself after creating, renaming or deleting
    /// a file in it: without that the new name may not survive a crash.
    dir_handle: File,
    fsync: FsyncPolicy,
    #[cfg(test)]
    pub(crate) faults: tests::Faults,
}

impl DirIo {
    pub(crate) fn open(dir: &Path, fsync: FsyncPolicy) -> io::Result<DirIo> {
        Ok(DirIo {
            dir: dir.to_path_buf(),
            dir_handle: File::open(dir)?,
            fsync,
            #[cfg(test)]
            faults: tests::Faults::default(),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes all of `bytes`: one write syscall for a regular file unless the disk fills up.
    pub(crate) fn write_all(&mut self, op: IoOp, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(fault) = self.faults.hit(op) {
            // A full disk: part of the buffer may land before the error.
            let written = fault.partial_bytes.unwrap_or(0).min(bytes.len());
            file.write_all(&bytes[..written])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let _ = op;
        file.write_all(bytes)
    }

    /// fdatasync: the file's data and the metadata needed to read it back (its size).
    /// `durable_len_bytes` is how long the file was at its last successful sync; an injected
    /// failure cuts the file back to it, as a kernel that drops the dirty pages would.
    pub(crate) fn sync_data(
        &mut self,
        op: IoOp,
        file: &File,
        durable_len_bytes: u64,
    ) -> io::Result<()> {
        if self.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        #[cfg(test)]
        if self.faults.hit(op).is_some() {
            file.set_len(durable_len_bytes)?;
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let _ = (op, durable_len_bytes);
        file.sync_data()
    }

    pub(crate) fn sync_dir(&mut self) -> io::Result<()> {
        if self.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        #[cfg(test)]
        if self.faults.hit(IoOp::DirSync).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.dir_handle.sync_all()
    }

    /// Creates a new, empty segment for appending and makes its name durable.
    pub(crate) fn create_segment(&mut self, path: &Path) -> io::Result<File> {
        #[cfg(test)]
        if self.faults.hit(IoOp::SegmentCreate).is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)?;
        self.sync_dir()?;
        Ok(file)
    }

    pub(crate) fn remove_segment(&mut self, path: &Path) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.hit(IoOp::SegmentDelete).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        std::fs::remove_file(path)?;
        self.sync_dir()
    }

    pub(crate) fn rename(&mut self, op: IoOp, from: &Path, to: &Path) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.hit(op).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let _ = op;
        std::fs::rename(from, to)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::IoOp;
    use std::collections::HashMap;

    /// Fails the operation `op` after `skip` successful ones. A failing write first writes
    /// `partial_bytes` of its buffer (a disk that fills up mid-write).
    #[derive(Copy, Clone, Debug, PartialEq, Eq)]
    pub(crate) struct Fault {
        pub(crate) op: IoOp,
        pub(crate) skip: u32,
        pub(crate) partial_bytes: Option<usize>,
    }

    #[derive(Default)]
    pub(crate) struct Faults {
        plan: Option<Fault>,
        counts: HashMap<IoOp, u32>,
    }

    impl Faults {
        pub(crate) fn inject(&mut self, fault: Fault) {
            self.plan = Some(fault);
        }

        /// How many operations of kind `op` were attempted so far.
        pub(crate) fn count(&self, op: IoOp) -> u32 {
            self.counts.get(&op).copied().unwrap_or(0)
        }

        /// Counts `op` and says whether it must fail (the plan fires once).
        pub(crate) fn hit(&mut self, op: IoOp) -> Option<Fault> {
            *self.counts.entry(op).or_insert(0) += 1;
            let plan = self.plan.as_mut()?;
            if plan.op != op {
                return None;
            }
            if plan.skip > 0 {
                plan.skip -= 1;
                return None;
            }
            self.plan.take()
        }
    }
}
