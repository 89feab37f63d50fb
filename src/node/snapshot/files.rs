//! Snapshot files in the data directory: writing one (temporary name, fsync, rename, directory
//! fsync), reading and verifying one, listing, loading the newest, removing old ones.
//! The byte format is in `mod.rs`.

use super::*;

// ---------------------------------------------------------------------------------------------
// Writing.

/// Writes `sm` as the snapshot described by `header` into `dir` (under a temporary name,
/// fsynced, renamed, directory fsynced), at no more than `rate` ("Pacing" below). Runs in the
/// fork child: it never logs (invariant 3). On failure the temporary file is removed.
pub fn write_snapshot_file<S: StateMachine + ?Sized>(
    dir: &Path,
    header: &SnapshotHeader,
    sm: &S,
    rate: WriteRate,
) -> io::Result<SnapshotWritten> {
    let last = header.meta.last;
    let tmp = tmp_path(dir, last, TMP_SUFFIX);
    let path = dir.join(snapshot_file_name(last));
    let spare = take_spare(dir, &tmp);
    let result = write_tmp(&tmp, spare, header, sm, rate).and_then(|(size_bytes, state_hash)| {
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        Ok(SnapshotWritten {
            path: path.clone(),
            size_bytes,
            state_hash,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes the snapshot into `tmp`: over the spare's blocks when `spare` is that file (already
/// renamed to `tmp`), else into a new file.
fn write_tmp<S: StateMachine + ?Sized>(
    tmp: &Path,
    spare: Option<File>,
    header: &SnapshotHeader,
    sm: &S,
    rate: WriteRate,
) -> io::Result<(u64, u64)> {
    let file = match spare {
        Some(file) => file,
        None => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?,
    };
    let mut w = BufWriter::with_capacity(
        IO_BUFFER_SIZE,
        CrcWriter::new(WritebackFile::new(file, rate)),
    );
    let (size, state_hash) = write_body(&mut w, header, sm)?;
    let file = w.into_inner().map_err(|e| e.into_error())?.inner.file;
    // A spare may have been longer.
    file.set_len(size)?;
    file.sync_all()?;
    Ok((size, state_hash))
}

// ---------------------------------------------------------------------------------------------
// Recycling: the spare.
//
// Freeing a large file's blocks stalls every log sync on the disk while the file system frees
// (and, mounted with `discard`, trims) them, and allocating a new file's blocks as it is
// written costs journal work beside those syncs. Measured (a 4 KiB pwrite+fdatasync loop
// beside a 288 MB snapshot written as the child writes it, 2-core VM, ext4 with `discard`,
// two rounds): while the old snapshot was removed in 16 MiB steps the loop's p99 was 5.25 and
// 4.18 ms (p50 0.11), while a new file was written 0.63 and 0.67 ms, while the old file was
// overwritten in place 0.43 and 0.52 ms (quiet: 0.14-0.21 ms). So a superseded snapshot is
// not removed but kept as the spare (`SPARE_NAME`), and the next snapshot is written over its
// blocks: nothing is freed or allocated (but for a difference in size), at the price of a
// second snapshot's worth of disk between snapshots, which a snapshot being written took
// anyway. A spare that someone still reads (a transfer's shared `flock`) is neither taken nor
// made; a transfer that opened the file just before it became the spare finds another header
// in it and fails (the follower asks again). Start-up removes the spare with the other
// `snapshot-*.tmp` files.

/// The spare's name: a `snapshot-*.tmp` name, which `list_snapshots` never lists.
pub const SPARE_NAME: &str = "snapshot-spare.tmp";

/// The spare, opened for writing, locked against readers and renamed to `tmp`; `None` when
/// there is none, someone reads it, or it cannot be taken (then the caller writes a new file).
fn take_spare(dir: &Path, tmp: &Path) -> Option<File> {
    let path = dir.join(SPARE_NAME);
    let file = OpenOptions::new().write(true).open(&path).ok()?;
    if !sys::try_lock(file.as_raw_fd(), sys::FileLock::Exclusive).unwrap_or(false) {
        return None;
    }
    fs::rename(&path, tmp).ok()?;
    Some(file)
}

/// After the snapshot `keep` is in place: the newest older snapshot becomes the spare (unless
/// there is one already, or someone reads it), and the other older ones are removed gently
/// (`remove_gently`). Runs in the fork child. Returns how many files it removed.
pub fn retire_older(dir: &Path, keep: EntryId) -> io::Result<usize> {
    let mut older = older_than(dir, keep)?;
    if !older.is_empty() && !dir.join(SPARE_NAME).exists() && make_spare(dir, &older[0])? {
        older.remove(0);
    }
    remove_gently(&older, Readers::Locked)
}

/// Renames the snapshot at `path` to the spare if nobody reads it; whether it did.
fn make_spare(dir: &Path, path: &Path) -> io::Result<bool> {
    let file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !sys::try_lock(file.as_raw_fd(), sys::FileLock::Exclusive).unwrap_or(false) {
        return Ok(false);
    }
    fs::rename(path, dir.join(SPARE_NAME))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Header, body and trailer, through the CRC: (bytes written, state hash). The buffer sits
/// above the CRC, so the CRC runs over whole buffers, never over the state machine's small
/// writes (a key, a length), where it runs its serial loop: that loop was the fork child's top
/// symbol in perf (cluster bench, 300k keys, 86 MB), and encoding those keys into a sink took
/// 68-79 ms with the buffer above the CRC against 87-131 ms below it (`benches/snapshot.rs`).
/// The buffer is flushed before each read of the CRC or count, which is then exact.
fn write_body<W: Write, S: StateMachine + ?Sized>(
    w: &mut BufWriter<CrcWriter<W>>,
    header: &SnapshotHeader,
    sm: &S,
) -> io::Result<(u64, u64)> {
    let head = encode_header(header);
    w.write_all(&head)?;
    let state_hash = sm.write_snapshot(w)?;
    w.flush()?;
    let body_len = w.get_ref().count - head.len() as u64;
    w.write_all(&state_hash.to_be_bytes())?;
    w.write_all(&body_len.to_be_bytes())?;
    w.flush()?;
    let crc = w.get_ref().crc;
    w.write_all(&crc.to_be_bytes())?;
    w.flush()?;
    Ok((w.get_ref().count, state_hash))
}

/// Bytes a snapshot writer hands the disk at a time.
const WRITEBACK_CHUNK: u64 = 256 * 1024;

/// A file written front to back that never has more than two `WRITEBACK_CHUNK`s of its own on
/// their way to the disk: each full chunk is sent to the disk at once, after waiting for the
/// one before it (so the child rarely blocks: that one has been in flight while this one was
/// serialized). Every log `fdatasync` on the same disk queues behind whatever the snapshot has
/// in flight, so that amount is the stall a snapshot can add to a write. Measured (86 MB
/// written beside a 4 KiB pwrite+fdatasync loop, 2-core VM, ext4): with 8 MiB windows (16 MiB
/// in flight) the loop's p99 went from 12 to 69-80 ms; with 256 KiB chunks it stayed at
/// 11-18 ms, and the snapshot took 0.6-1.1 s instead of 0.3-0.6 s.
/// Invariant: `waited <= started <= written`; after every `write`,
/// `written - started < WRITEBACK_CHUNK` and the chunk in flight is `[waited, started)`.
struct WritebackFile {
    file: File,
    written: u64,
    /// Everything before this offset has been sent to the disk.
    started: u64,
    /// Everything before this offset is on the disk (no cache flush: the final fsync does it).
    waited: u64,
    pacer: Pacer,
    opened: Instant,
}

impl WritebackFile {
    fn new(file: File, rate: WriteRate) -> WritebackFile {
        WritebackFile {
            file,
            written: 0,
            started: 0,
            waited: 0,
            pacer: Pacer::new(rate),
            opened: Instant::now(),
        }
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_CHUNK {
            let fd = self.file.as_raw_fd();
            if self.started > self.waited {
                let len = self.started - self.waited;
                sys::writeback(fd, self.waited, len, sys::Writeback::Wait)?;
                self.waited = self.started;
            }
            let len = self.written - self.started;
            sys::writeback(fd, self.started, len, sys::Writeback::Start)?;
            self.started = self.written;
            let pause = self.pacer.pause(len, self.opened.elapsed());
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Pacing.
//
// Every log `fdatasync` on the disk the snapshot shares also flushes whatever the snapshot wrote
// since the sync before it, so the faster the child writes, the slower every commit; and the
// faster it finishes, the sooner the next snapshot forks (each fork costs its node the fork
// and a copy-on-write fault per page it then writes). Measured for issue 16 (cluster bench's
// snapshot rows: 1M keys, 288 MB snapshots back to back in rotation, 64 connections of SETs,
// 2-core VM, alternating builds): unpaced, 0.3-0.4 s a snapshot, p99 during snapshots 1.71x and
// 1.68x of the quiet p99, throughput 0.76x / 0.79x; paced to 128 MiB/s, 2.4 s a snapshot, 1.26x
// and 1.33x, throughput 0.88x / 0.87x. Beside a redis-benchmark load, a follower's fdatasync p99
// was 0.7 ms quiet, 2.7 ms beside an unpaced child, 1.25 ms beside a paced one (and 1.5 ms beside
// a child that only slept: the forks' share). `snapshot_write_rate` sets the rate (TiKV paces its
// snapshot I/O the same way, at 100 MB/s by default).

/// How fast a snapshot child may write: `Unlimited`, or at most this many bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRate {
    Unlimited,
    BytesPerSec(NonZeroU64),
}

impl WriteRate {
    /// `0` is `Unlimited` (the config's spelling).
    pub fn from_config(bytes_per_sec: u64) -> WriteRate {
        NonZeroU64::new(bytes_per_sec).map_or(WriteRate::Unlimited, WriteRate::BytesPerSec)
    }

    /// How long `bytes` take at this rate (zero when unlimited).
    pub fn time_for(self, bytes: u64) -> Duration {
        match self {
            WriteRate::Unlimited => Duration::ZERO,
            WriteRate::BytesPerSec(rate) => {
                let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate.get());
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
        }
    }
}

/// Credit a writer that fell behind its schedule (starved of the CPU or the disk) may spend at
/// full speed: without a bound, a child that stalled for a second would then write a second's
/// worth of bytes in one burst, the burst pacing exists to prevent.
const PACE_CREDIT: Duration = Duration::from_millis(20);

/// The schedule of a paced writer: each chunk may go out once the bytes before it had the time
/// the rate gives them, counted from the writer's start, less at most `PACE_CREDIT` of time it
/// fell behind. Pure (the caller reads the clock and sleeps), so tests drive it.
#[derive(Debug)]
pub struct Pacer {
    rate: WriteRate,
    /// When (since the writer opened) the bytes handed over so far may have been written.
    due: Duration,
}

impl Pacer {
    pub fn new(rate: WriteRate) -> Pacer {
        Pacer {
            rate,
            due: Duration::ZERO,
        }
    }

    /// `bytes` more were just handed to the disk, `elapsed` after the writer opened: how long
    /// to pause before the next ones.
    pub fn pause(&mut self, bytes: u64, elapsed: Duration) -> Duration {
        if self.rate == WriteRate::Unlimited {
            return Duration::ZERO;
        }
        self.due = self.due.max(elapsed.saturating_sub(PACE_CREDIT)) + self.rate.time_for(bytes);
        self.due.saturating_sub(elapsed)
    }
}

// ---------------------------------------------------------------------------------------------
// Removing, gently (in the fork child).

/// Bytes freed per step when the snapshot child removes a file; a file no larger is simply
/// unlinked.
const REMOVE_STEP_BYTES: u64 = 16 * 1024 * 1024;

/// Whether a file may be truncated away while someone still reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Nobody opens it (a retired log segment): truncate it.
    None,
    /// A snapshot file: readers hold a shared `flock` on it (`SnapshotSender::new`); truncate it
    /// only if the exclusive lock is free, else only unlink it (the readers keep its contents).
    Locked,
}

/// Removes the files in `paths` without one long stall of every other writer on the disk:
/// unlinks each (their names are gone before this returns, their directories fsynced), then
/// frees each one's blocks `REMOVE_STEP_BYTES` at a time, each step made durable by an fsync
/// (so the journal commit that frees, and on a `discard` mount trims, that step comes now and
/// is small) and followed by a pause as long as it took. Unlinking 86 MB at once stalled a
/// 4 KiB pwrite+fdatasync loop beside it (ext4 mounted with `discard`) for 75-104 ms; 16 MiB
/// steps kept its maximum at 22-28 ms, 4 MiB steps at 15-16 ms but with four times the fsyncs
/// (slow for the child on a busy disk). Runs in the fork child: it never logs (invariant 3). Returns how many names it
/// removed; a file that vanished meanwhile is not an error.
pub fn remove_gently(paths: &[PathBuf], readers: Readers) -> io::Result<usize> {
    let mut opened = Vec::new();
    let mut removed = 0;
    let mut dirs: Vec<&Path> = Vec::new();
    for path in paths {
        let file = match OpenOptions::new().write(true).open(path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => None, // unlink it all the same
        };
        let small = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_none_or(|m| m.len() <= REMOVE_STEP_BYTES);
        let unread = match (&file, readers) {
            _ if small => false,
            (Some(_), Readers::None) => true,
            (Some(f), Readers::Locked) => {
                sys::try_lock(f.as_raw_fd(), sys::FileLock::Exclusive).unwrap_or(false)
            }
            (None, _) => false,
        };
        match fs::remove_file(path) {
            Ok(()) => {
                removed += 1;
                let parent = path.parent().unwrap_or(Path::new("."));
                if !dirs.contains(&parent) {
                    dirs.push(parent);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if let (Some(file), true) = (file, unread) {
            opened.push(file);
        }
    }
    for dir in dirs {
        sync_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?;
    }
    for file in opened {
        free_in_steps(&file)?;
    }
    Ok(removed)
}

/// Truncates an unlinked `file` to nothing, `REMOVE_STEP_BYTES` at a time (see `remove_gently`).
fn free_in_steps(file: &File) -> io::Result<()> {
    let mut size = file.metadata()?.len();
    while size > 0 {
        size = size.saturating_sub(REMOVE_STEP_BYTES);
        let step_started = Instant::now();
        file.set_len(size)?;
        file.sync_all()?;
        std::thread::sleep(step_started.elapsed());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// Reads `file` from `offset` on with `pread`, leaving the file's own position alone.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads only the header (no CRC check): for listing and for deciding what a file is.
pub fn read_snapshot_header(path: &Path) -> Result<SnapshotHeader, SnapshotFileError> {
    let file = File::open(path).map_err(|e| SnapshotFileError::io(path, e))?;
    read_header_of(&file, path)
}

/// [`read_snapshot_header`] of an open `file` (from its start, whatever its position).
pub(super) fn read_header_of(
    file: &File,
    path: &Path,
) -> Result<SnapshotHeader, SnapshotFileError> {
    let size = file
        .metadata()
        .map_err(|e| SnapshotFileError::io(path, e))?
        .len();
    let mut r = BufReader::with_capacity(4096, ReadAt { file, offset: 0 });
    decode_header(&mut r, path, size)
}

/// An open snapshot file whose header was read through the CRC, positioned at its body.
struct Opened<R: Read> {
    reader: CrcReader<R>,
    header: SnapshotHeader,
    body_len: u64,
    trailer_hash: u64,
}

fn open_checked(path: &Path) -> Result<Opened<BufReader<File>>, SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let file = File::open(path).map_err(|e| SnapshotFileError::io(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| SnapshotFileError::io(path, e))?
        .len();
    if size < SNAPSHOT_FILE_SIZE_MIN {
        return Err(SnapshotFileError::new(path, K::Truncated { size }));
    }
    let mut trailer = [0u8; TRAILER_SIZE];
    file.read_exact_at(&mut trailer, size - TRAILER_SIZE as u64)
        .map_err(|e| SnapshotFileError::io(path, e))?;
    let reader = BufReader::with_capacity(IO_BUFFER_SIZE, file);
    open_reader(reader, size, &trailer, path)
}

/// Reads the header of a snapshot of `size` bytes from `reader` (at its start), given the
/// file's last `TRAILER_SIZE` bytes, and checks the lengths add up.
fn open_reader<R: Read>(
    reader: R,
    size: u64,
    trailer: &[u8; TRAILER_SIZE],
    path: &Path,
) -> Result<Opened<R>, SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let trailer_hash = BigEndian::read_u64(&trailer[0..8]);
    let body_len = BigEndian::read_u64(&trailer[8..16]);
    let mut reader = CrcReader::new(reader);
    let header = decode_header(&mut reader, path, size)?;
    let header_len = reader.count;
    assert_eq!(header_len, self::header_len(&header));
    let fits = header_len
        .checked_add(body_len)
        .and_then(|n| n.checked_add(TRAILER_SIZE as u64))
        == Some(size);
    if !fits {
        let kind = K::Length {
            header: header_len,
            body: body_len,
            size,
        };
        return Err(SnapshotFileError::new(path, kind));
    }
    Ok(Opened {
        reader,
        header,
        body_len,
        trailer_hash,
    })
}

/// Reads the trailer through the CRC and compares the stored CRC with the computed one.
fn check_trailer<R: Read>(o: &mut Opened<R>, path: &Path) -> Result<(), SnapshotFileError> {
    let mut trailer = [0u8; TRAILER_SIZE];
    o.reader
        .read_exact(&mut trailer[..16])
        .map_err(|e| SnapshotFileError::io(path, e))?;
    let computed = o.reader.crc;
    o.reader
        .read_exact(&mut trailer[16..])
        .map_err(|e| SnapshotFileError::io(path, e))?;
    let stored = BigEndian::read_u32(&trailer[16..]);
    if stored != computed {
        return Err(SnapshotFileError::new(
            path,
            SnapshotFileErrorKind::Crc { stored, computed },
        ));
    }
    Ok(())
}

/// Checks a whole file (header, lengths, CRC) without a state machine: what a follower does
/// with a transferred file before renaming it into place.
pub fn verify_snapshot_file(path: &Path) -> Result<SnapshotHeader, SnapshotFileError> {
    verify_opened(open_checked(path)?, path)
}

/// `verify_snapshot_file` for a snapshot held in memory (the simulator's disk); `name` names
/// it in errors.
pub fn verify_snapshot_bytes(
    bytes: &[u8],
    name: &Path,
) -> Result<SnapshotHeader, SnapshotFileError> {
    verify_opened(open_bytes(bytes, name)?, name)
}

/// `load_snapshot_file` for a snapshot held in memory (the simulator's disk).
pub fn load_snapshot_bytes<S: StateMachine + ?Sized>(
    bytes: &[u8],
    sm: &mut S,
    name: &Path,
) -> Result<(SnapshotHeader, u64), SnapshotFileError> {
    load_opened(open_bytes(bytes, name)?, sm, name)
}

/// Writes the snapshot described by `header` of `sm` to `w` in the file format; returns
/// (bytes written, state hash). The simulator's disk keeps the result in memory.
pub fn write_snapshot_to<S: StateMachine + ?Sized>(
    w: &mut impl Write,
    header: &SnapshotHeader,
    sm: &S,
) -> io::Result<(u64, u64)> {
    let mut w = BufWriter::with_capacity(IO_BUFFER_SIZE, CrcWriter::new(w));
    let (size, hash) = write_body(&mut w, header, sm)?;
    w.into_inner().map_err(|e| e.into_error())?;
    Ok((size, hash))
}

fn open_bytes<'a>(bytes: &'a [u8], name: &Path) -> Result<Opened<&'a [u8]>, SnapshotFileError> {
    let size = bytes.len() as u64;
    if size < SNAPSHOT_FILE_SIZE_MIN {
        let kind = SnapshotFileErrorKind::Truncated { size };
        return Err(SnapshotFileError::new(name, kind));
    }
    let mut trailer = [0u8; TRAILER_SIZE];
    trailer.copy_from_slice(&bytes[bytes.len() - TRAILER_SIZE..]);
    open_reader(bytes, size, &trailer, name)
}

fn verify_opened<R: Read>(
    mut o: Opened<R>,
    path: &Path,
) -> Result<SnapshotHeader, SnapshotFileError> {
    let body_len = o.body_len;
    let copied = io::copy(&mut (&mut o.reader).take(body_len), &mut io::sink())
        .map_err(|e| SnapshotFileError::io(path, e))?;
    assert_eq!(
        copied, body_len,
        "file size was checked against the body length"
    );
    check_trailer(&mut o, path)?;
    Ok(o.header)
}

/// Loads the file into `sm` and verifies it in the same pass. On any error `sm` holds
/// whatever was partly loaded: load into a fresh state machine and swap only on `Ok`.
pub fn load_snapshot_file<S: StateMachine + ?Sized>(
    path: &Path,
    sm: &mut S,
) -> Result<(SnapshotHeader, u64), SnapshotFileError> {
    load_opened(open_checked(path)?, sm, path)
}

fn load_opened<R: Read, S: StateMachine + ?Sized>(
    mut o: Opened<R>,
    sm: &mut S,
    path: &Path,
) -> Result<(SnapshotHeader, u64), SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let mut body = (&mut o.reader).take(o.body_len);
    let loaded = sm.load_snapshot(&mut body);
    // Read whatever the state machine left, so the CRC covers the whole file: a bad CRC is
    // the better explanation of a state machine's complaint.
    let left = io::copy(&mut body, &mut io::sink()).map_err(|e| SnapshotFileError::io(path, e))?;
    check_trailer(&mut o, path)?;
    let loaded =
        loaded.map_err(|e| SnapshotFileError::new(path, K::StateMachine(e.to_string())))?;
    if left != 0 {
        return Err(SnapshotFileError::new(path, K::BodyNotConsumed { left }));
    }
    if loaded != o.trailer_hash {
        let kind = K::StateHash {
            trailer: o.trailer_hash,
            loaded,
        };
        return Err(SnapshotFileError::new(path, kind));
    }
    Ok((o.header, loaded))
}

// ---------------------------------------------------------------------------------------------
// The directory.

/// Snapshot files in `dir`, newest (highest index, then term) first; ignores `*.tmp` and any
/// other name.
pub fn list_snapshots(dir: &Path) -> io::Result<Vec<(EntryId, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(parse_snapshot_file_name) {
            out.push((id, entry.path()));
        }
    }
    out.sort_by_key(|(id, _)| std::cmp::Reverse((id.index, id.term)));
    Ok(out)
}

/// Removes `snapshot-*.tmp` files left by crashed writers or interrupted transfers. Call it
/// at start-up only, before any snapshot child or receiver exists.
pub fn remove_stale_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(NAME_PREFIX) && name.ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The newest snapshot that loads fully into a fresh state machine from `make`. Newer files
/// that fail are logged (naming the file and the reason) and skipped; if there are files and
/// every one fails, that is an error — never a silent empty state. `Ok(None)`: no files.
pub fn load_newest<S: StateMachine>(
    dir: &Path,
    mut make: impl FnMut() -> S,
) -> Result<Option<(SnapshotHeader, S, PathBuf)>, SnapshotFileError> {
    let files = list_snapshots(dir).map_err(|e| SnapshotFileError::io(dir, e))?;
    let count = files.len();
    for (id, path) in files {
        let mut sm = make();
        match load_snapshot_file(&path, &mut sm) {
            Ok((header, _)) if header.meta.last != id => {
                let kind = SnapshotFileErrorKind::NameMismatch {
                    name: id,
                    header: header.meta.last,
                };
                log::error!("{}; skipping it", SnapshotFileError::new(&path, kind));
            }
            Ok((header, _)) => return Ok(Some((header, sm, path))),
            Err(e) => log::error!("{e}; skipping it"),
        }
    }
    if count == 0 {
        Ok(None)
    } else {
        Err(SnapshotFileError::new(
            dir,
            SnapshotFileErrorKind::AllCorrupt { count },
        ))
    }
}

/// The snapshot files older than `keep` (lower index, or same index and lower term), newest
/// first.
fn older_than(dir: &Path, keep: EntryId) -> io::Result<Vec<PathBuf>> {
    Ok(list_snapshots(dir)?
        .into_iter()
        .filter(|(id, _)| (id.index, id.term) < (keep.index, keep.term))
        .map(|(_, path)| path)
        .collect())
}

/// Removes every snapshot file older than `keep` at once. Returns how many it removed.
pub fn remove_older_than(dir: &Path, keep: EntryId) -> io::Result<usize> {
    let older = older_than(dir, keep)?;
    for path in &older {
        fs::remove_file(path)?;
    }
    if !older.is_empty() {
        sync_dir(dir)?;
    }
    Ok(older.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const CHUNK: u64 = WRITEBACK_CHUNK;

    fn rate(bytes_per_sec: u64) -> WriteRate {
        WriteRate::from_config(bytes_per_sec)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives a pacer the way `WritebackFile` does from `start`: each chunk takes `work` to
    /// produce, then the writer sleeps what the pacer asks. Returns when the last pause ended.
    fn run_from(pacer: &mut Pacer, start: Duration, chunks: u64, work: Duration) -> Duration {
        let mut now = start;
        for _ in 0..chunks {
            now += work;
            now += pacer.pause(CHUNK, now);
        }
        now
    }

    fn run(pacer: &mut Pacer, chunks: u64, work: Duration) -> Duration {
        run_from(pacer, Duration::ZERO, chunks, work)
    }

    #[test]
    fn zero_is_unpaced_and_never_pauses() {
        assert_eq!(rate(0), WriteRate::Unlimited);
        assert_eq!(rate(0).time_for(u64::MAX), Duration::ZERO);
        let mut p = Pacer::new(rate(0));
        assert_eq!(run(&mut p, 1000, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_fast_writer_takes_the_time_its_bytes_are_given() {
        // 64 MiB at 128 MiB/s: half a second, whether producing a chunk costs nothing or
        // part of its share (256 KiB at 128 MiB/s is ~1.95 ms).
        for work in [
            Duration::ZERO,
            Duration::from_micros(500),
            Duration::from_micros(1900),
        ] {
            let mut p = Pacer::new(rate(128 * MIB));
            let took = run(&mut p, 64 * MIB / CHUNK, work);
            assert_eq!(took, ms(500), "work {work:?}");
        }
    }

    #[test]
    fn a_writer_slower_than_the_rate_never_pauses() {
        // 256 KiB per 5 ms is 50 MiB/s, under the 128 MiB/s allowed.
        let mut p = Pacer::new(rate(128 * MIB));
        let mut now = Duration::ZERO;
        for _ in 0..100 {
            now += ms(5);
            assert_eq!(p.pause(CHUNK, now), Duration::ZERO);
        }
    }

    #[test]
    fn time_lost_to_a_stall_is_not_made_up_in_a_burst() {
        let mut p = Pacer::new(rate(128 * MIB));
        let on_time = run(&mut p, 100, Duration::ZERO);
        // Stalled a second (starved of the CPU or the disk), then fast again: at most
        // PACE_CREDIT's worth of bytes go unpaced...
        let resumed = on_time + Duration::from_secs(1);
        let mut unpaced = 0;
        while unpaced < 64 * MIB && p.pause(CHUNK, resumed).is_zero() {
            unpaced += CHUNK;
        }
        let credit = (PACE_CREDIT.as_nanos() * u128::from(128 * MIB) / 1_000_000_000) as u64;
        assert!(unpaced <= credit, "{unpaced} bytes went unpaced");
        // ... and then the rate holds again: 64 MiB more take half a second.
        let done = run_from(&mut p, resumed, 64 * MIB / CHUNK, Duration::ZERO);
        assert!(done >= resumed + ms(500), "{done:?} vs {resumed:?}");
    }

    #[test]
    fn time_for_is_exact_and_saturates() {
        assert_eq!(rate(MIB).time_for(MIB), Duration::from_secs(1));
        assert_eq!(rate(3).time_for(1), Duration::from_nanos(333_333_333));
        assert_eq!(
            rate(1).time_for(u64::MAX),
            Duration::from_nanos(u64::MAX),
            "saturates instead of overflowing"
        );
    }
}
