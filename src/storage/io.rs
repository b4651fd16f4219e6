//! The few file operations storage makes, in one place: every write, fsync, create, rename
//! and delete of the WAL (segments, `hard_state`) and of the snapshot files goes through
//! [`DirIo`], which applies the fsync policy and, in tests, injects faults.
//!
//! Fault injection exists because the failures that matter (a full disk, a failed fsync)
//! cannot be provoked for real in a test: root ignores permissions, and a failed fsync needs
//! a failing device. Under `#[cfg(test)]` a [`Fault`] makes the n-th operation of one kind
//! fail the way the kernel would, and every operation is counted so tests can pin "one write
//! and one fsync per batch". Release builds carry none of it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// When the store fsyncs: the policy the WAL and the snapshot files apply to every file
/// they write (through `DirIo`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Every `sync` reaches the disk before it returns: acknowledgements mean durable.
    #[default]
    Always,
    /// No fsync at all. Survives a process crash but not a power loss or kernel crash: see
    /// the WAL's module docs (`FsyncPolicy::Never`) for what may be lost.
    Never,
}

/// The kinds of operation a test can fail or count. (Some are named only by tests.)
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IoOp {
    SegmentCreate,
    /// Reserving a segment's space (fallocate). Its failure is not an error: the WAL goes
    /// on without preallocation.
    SegmentPreallocate,
    SegmentWrite,
    SegmentSync,
    /// Cutting a finished segment's preallocated tail off, and syncing that, at a roll.
    SegmentTrim,
    SegmentDelete,
    DirSync,
    HardStateWrite,
    HardStateSync,
    HardStateRename,
    /// Creating a snapshot file (`.snap.tmp` or `.partial`).
    SnapshotCreate,
    SnapshotWrite,
    SnapshotSync,
    /// Renaming a snapshot file: `.snap.tmp` or `.received` to `.snap`, `.partial` to
    /// `.received`, a damaged one to `.corrupt`.
    SnapshotRename,
    /// Deleting a snapshot file: an old one, a leftover, a discarded transfer.
    SnapshotDelete,
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

    /// Writes all of `bytes` at `offset` (pwrite): one syscall for a regular file unless the
    /// disk fills up. Writing at a tracked offset rather than with O_APPEND is what lets a
    /// record land in preallocated space (see `wal.rs`, "Segments").
    pub(crate) fn write_all_at(
        &mut self,
        op: IoOp,
        file: &File,
        bytes: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        #[cfg(test)]
        if let Some(fault) = self.faults.hit(op) {
            // A full disk: part of the buffer may land before the error.
            let written = fault.partial_bytes.unwrap_or(0).min(bytes.len());
            file.write_all_at(&bytes[..written], offset)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let _ = op;
        file.write_all_at(bytes, offset)
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

    /// Creates a new segment, preallocated to `preallocate_bytes` when the file system
    /// allows (best effort: see [`DirIo::preallocate`]), and makes its name and size durable:
    /// the file is fdatasynced (its new size) and then the directory (its name), once here,
    /// so no record's fdatasync has to carry that metadata.
    pub(crate) fn create_segment(
        &mut self,
        path: &Path,
        preallocate_bytes: u64,
    ) -> io::Result<File> {
        #[cfg(test)]
        if self.faults.hit(IoOp::SegmentCreate).is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        if self.preallocate(path, &file, 0, preallocate_bytes) && self.fsync == FsyncPolicy::Always
        {
            file.sync_data()?;
        }
        self.sync_dir()?;
        Ok(file)
    }

    /// Extends `file` (holding `used_bytes` of records) to `target_bytes` with reserved,
    /// zero-reading space (fallocate mode 0: the size changes), so that later writes below
    /// `target_bytes` leave the inode's size alone and an fdatasync flushes data only.
    ///
    /// Best effort, and says whether the file now has the size: a file system without
    /// fallocate (EOPNOTSUPP), a full disk (ENOSPC) or any other error is logged and the
    /// file is put back to `used_bytes` (a failed fallocate may have extended it part way);
    /// writes then grow the file as they would without preallocation, and a full disk fails
    /// at the write or fsync as always. The caller makes the new size durable.
    ///
    /// Calls `fallocate(2)` rather than `posix_fallocate(3)`: where the file system lacks
    /// fallocate, glibc's posix_fallocate emulates it by writing into every block (16,384
    /// writes for a 64 MiB segment), which is slower than no preallocation at all.
    pub(crate) fn preallocate(
        &mut self,
        path: &Path,
        file: &File,
        used_bytes: u64,
        target_bytes: u64,
    ) -> bool {
        let result = match file.metadata() {
            Ok(metadata) if metadata.len() >= target_bytes => return true,
            Ok(_) => self.fallocate(file, used_bytes, target_bytes),
            Err(error) => Err(error),
        };
        let Err(error) = result else {
            return true;
        };
        log::info!(
            "wal: cannot preallocate {} to {target_bytes} bytes ({error}); writing without \
             preallocation, each fsync then also updates the file's size",
            path.display()
        );
        if let Err(error) = file.set_len(used_bytes) {
            // The size may stay extended: the extra bytes read as zeros, which recovery
            // takes for unused preallocated space, so this is harmless.
            log::debug!(
                "wal: cannot cut {} back to {used_bytes} bytes after the failed \
                 preallocation: {error}",
                path.display()
            );
        }
        false
    }

    fn fallocate(&mut self, file: &File, used_bytes: u64, target_bytes: u64) -> io::Result<()> {
        #[cfg(test)]
        if let Some(fault) = self.faults.hit(IoOp::SegmentPreallocate) {
            // As a file system that runs out of space part way: the size may have grown.
            if let Some(partial_bytes) = fault.partial_bytes {
                file.set_len(used_bytes + partial_bytes as u64)?;
            }
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let start = used_bytes.min(target_bytes);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            let (Ok(offset), Ok(len)) = (
                libc::off_t::try_from(start),
                libc::off_t::try_from(target_bytes - start),
            ) else {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            };
            // SAFETY: fallocate only reads the descriptor, which `file` keeps open for the
            // whole call, and touches no memory of ours.
            let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (file, start);
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }

    /// Cuts a finished segment back to the `used_bytes` its records take (dropping its
    /// preallocated tail) and makes that durable, so only the last segment ever ends in
    /// unused zeros (see `wal.rs`, "Recovery").
    pub(crate) fn trim_segment(&mut self, file: &File, used_bytes: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.hit(IoOp::SegmentTrim).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if file.metadata()?.len() == used_bytes {
            return Ok(());
        }
        file.set_len(used_bytes)?;
        if self.fsync == FsyncPolicy::Always {
            file.sync_data()?;
        }
        Ok(())
    }

    pub(crate) fn remove_segment(&mut self, path: &Path) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.hit(IoOp::SegmentDelete).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        std::fs::remove_file(path)?;
        self.sync_dir()
    }

    /// Creates (or truncates) a file to write from the start, such as a snapshot file.
    pub(crate) fn create_file(&mut self, op: IoOp, path: &Path) -> io::Result<File> {
        #[cfg(test)]
        if self.faults.hit(op).is_some() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let _ = op;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// fsync (data and metadata) of a whole file written once, such as a snapshot file,
    /// before it is renamed into place.
    pub(crate) fn sync_all(&mut self, op: IoOp, file: &File) -> io::Result<()> {
        if self.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        #[cfg(test)]
        if self.faults.hit(op).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let _ = op;
        file.sync_all()
    }

    /// Deletes a file. The directory is not synced: the caller syncs it once after a batch
    /// of deletions (or, for a file that never took effect, not at all).
    pub(crate) fn remove_file(&mut self, op: IoOp, path: &Path) -> io::Result<()> {
        #[cfg(test)]
        if self.faults.hit(op).is_some() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let _ = op;
        std::fs::remove_file(path)
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

/// A file written front to back through a [`DirIo`]: each write is one `write_all_at` at
/// the end of what was written, so it is counted and can fail as any other write.
pub(crate) struct SequentialWriter<'a> {
    pub(crate) io: &'a mut DirIo,
    pub(crate) op: IoOp,
    pub(crate) file: &'a File,
    pub(crate) written_bytes: u64,
}

impl io::Write for SequentialWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.io
            .write_all_at(self.op, self.file, bytes, self.written_bytes)?;
        self.written_bytes += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
