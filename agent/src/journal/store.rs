//! The file-backed journal. On disk, in one directory (`<data_dir>/journal`):
//!
//! - `<20-digit segment id>.seg`: a [`format`] segment header, then frames appended in order. Only the
//!   newest segment is written to; older ones are sealed (synced once, never written again).
//! - `state`: the [`State`] (ack cursor, drop/loss counters, next seq per thing), replaced atomically by
//!   writing `state.tmp`, `fdatasync`, `rename`, and syncing the directory.
//!
//! Memory is bounded by the number of segments and things, never by the number of records: segments are
//! streamed through a fixed buffer when scanned at open and when read.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{debug, error, info, warn};

use super::format::{self, Cursor, FrameError, Record, SegmentHeader, State, HEADER_LEN};
use super::{FsyncPolicy, JournalError, Limits};

const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const SEGMENT_EXT: &str = "seg";
/// Reads go through a buffer of this size: large enough for the biggest frame, small for the gateway.
const READ_BUF: usize = 16 * 1024;

type Result<T> = std::result::Result<T, JournalError>;

/// What one segment holds, kept in memory (a few words per segment).
#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    first_index: u64,
    /// Bytes of valid content, header included; the file is never longer once open() has run.
    len: u64,
    /// Frames in the segment (undecodable ones included: they take an index).
    records: u64,
    /// When it was last appended to (or found at open), on the monotonic clock: the age bound
    /// counts time the records spent here, never the wall clock (no RTC: it may jump by years
    /// when NTP sets it, and every reading would look ancient).
    touched: Instant,
}

impl Segment {
    fn end(&self) -> Cursor {
        Cursor {
            segment: self.id,
            offset: self.len,
            index: self.first_index + self.records,
        }
    }
    fn start(&self) -> Cursor {
        Cursor {
            segment: self.id,
            offset: HEADER_LEN as u64,
            index: self.first_index,
        }
    }
}

/// A torn or corrupt tail cut off a segment at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    pub file: PathBuf,
    pub offset: u64,
    pub lost_bytes: u64,
    /// The frame error found at `offset`.
    pub reason: String,
}

/// What [`Journal::open`] found and repaired.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub segments: usize,
    /// Unacknowledged records, to be published again.
    pub depth: u64,
    pub truncations: Vec<Truncation>,
    /// Segment files removed because their header was unreadable.
    pub removed: Vec<PathBuf>,
    /// Records known lost to corruption during this open (gaps in the record index).
    pub lost_records: u64,
    /// Frames with a valid CRC whose payload this build cannot decode (skipped when read).
    pub undecodable: u64,
    /// The state file was missing (first start) — not an error.
    pub fresh: bool,
    /// The state file was unreadable: ack cursor and counters restarted (everything is resent).
    pub state_reset: bool,
}

/// Counters for the health topic and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records appended and not yet acknowledged.
    pub depth: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    pub segments: usize,
    /// Unacknowledged records dropped by the size or age bound, since the journal was created.
    pub dropped: u64,
    /// Records lost to corruption, since the journal was created.
    pub lost_records: u64,
    /// Bytes cut off torn or corrupt segments, since the journal was created.
    pub lost_bytes: u64,
    /// Since open: appends, bytes handed to write(2) (segments and state), fsync calls.
    pub appended: u64,
    pub bytes_written: u64,
    pub fsyncs: u64,
}

/// The journal. Not shared between threads; the caller owns it on one thread.
pub struct Journal {
    dir: PathBuf,
    limits: Limits,
    segs: VecDeque<Segment>,
    /// Append handle of the last segment.
    active: File,
    state: State,
    next_seq: BTreeMap<String, u64>,
    /// Appends since the last data sync, and when the first of them happened.
    unsynced: u32,
    unsynced_since: Option<Instant>,
    /// Acks since the state file was last written, and when the first of them happened.
    acks_pending: u32,
    acks_since: Option<Instant>,
    scratch: Vec<u8>,
    read_buf: Vec<u8>,
    appended: u64,
    bytes_written: u64,
    fsyncs: u64,
    closed: bool,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, cutting off torn or corrupt tails.
    pub fn open(dir: impl AsRef<Path>, limits: Limits) -> Result<(Journal, Recovery)> {
        limits.check()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(JournalError::io(&dir, "create directory"))?;
        let mut rec = Recovery::default();
        let mut fsyncs = 0;

        let tmp = dir.join(STATE_TMP);
        if tmp.exists() {
            // A state write interrupted before its rename: the old `state` is still the truth.
            fs::remove_file(&tmp).map_err(JournalError::io(&tmp, "remove"))?;
        }
        let mut state = load_state(&dir, &mut rec)?;

        let mut ids = list_segments(&dir)?;
        ids.sort_unstable();
        let mut segs: VecDeque<Segment> = VecDeque::new();
        let mut next_seq: BTreeMap<String, u64> = state.next_seq.iter().cloned().collect();
        let mut read_buf = Vec::with_capacity(format::MAX_PAYLOAD);
        // Index where the previous surviving segment ended, and whether damage was cut off since then,
        // so a gap in the index is counted as a loss once (when the damage is found and cut), not at
        // every later open.
        let mut prev_end: Option<u64> = None;
        let mut damaged = false;
        let last_id = ids.last().copied();
        for id in ids {
            let path = segment_path(&dir, id);
            let Some(seg) = scan_segment(
                &path,
                id,
                Some(id) == last_id,
                &mut next_seq,
                &mut read_buf,
                &mut rec,
                &mut state,
                &mut fsyncs,
            )?
            else {
                damaged = true;
                continue;
            };
            if let Some(end) = prev_end {
                if seg.first_index > end && damaged {
                    let gap = seg.first_index - end;
                    warn!(file = %path.display(), lost_records = gap, "records lost before this segment");
                    rec.lost_records += gap;
                    state.lost_records += gap;
                }
            }
            damaged = rec.truncations.last().is_some_and(|t| t.file == path);
            prev_end = Some(seg.first_index + seg.records);
            segs.push_back(seg);
        }

        // After a crash or power cut, records appended but not yet synced may have been published and
        // then lost from disk; their seqs must not be reused, or consumers would drop the new readings
        // as duplicates. Skip ahead by as many records as the fsync policy leaves unsynced.
        if !state.clean && !rec.fresh {
            let margin = match limits.fsync {
                FsyncPolicy::Always => 0,
                FsyncPolicy::Every { records, .. } => u64::from(records),
                // Kernel writeback: ~30 s of readings; a generous bound.
                FsyncPolicy::Never => 1 << 20,
            };
            if margin > 0 && !next_seq.is_empty() {
                info!(
                    margin,
                    "unclean shutdown: skipping seqs that may have been published and lost"
                );
                for s in next_seq.values_mut() {
                    *s += margin;
                }
            }
        }
        state.clean = false;

        // Keep ids and indices growing even when every segment was deleted.
        let (mut next_segment, next_index) = match segs.back() {
            Some(s) => (s.id + 1, s.first_index + s.records),
            None => (state.next_segment, state.next_index.max(state.ack.index)),
        };
        next_segment = next_segment.max(state.ack.segment + 1);

        // An ack persisted after its records' segment bytes were lost in a power cut (they were acked,
        // so not a loss) points past the end: clamp it, so new appends are not taken as acknowledged.
        let end = segs.back().map(Segment::end).unwrap_or(Cursor {
            segment: next_segment,
            offset: HEADER_LEN as u64,
            index: next_index,
        });
        if state.ack > end {
            warn!(ack = %state.ack, end = %end, "ack cursor beyond the journal's end; clamped");
            state.ack = end;
        }
        if let Some(s) = segs.iter().find(|s| s.id == state.ack.segment) {
            if state.ack.offset > s.len {
                state.ack = s.end();
            }
        }

        let reuse_last = segs
            .back()
            .is_some_and(|s| s.len + room_for_one() <= limits.segment_bytes);
        let active = if reuse_last {
            let s = segs.back().map(|s| s.id).unwrap_or_default();
            let path = segment_path(&dir, s);
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(JournalError::io(&path, "open for append"))?
        } else {
            let (seg, file) = create_segment(&dir, next_segment, next_index)?;
            fsyncs += 2;
            segs.push_back(seg);
            file
        };
        state.next_segment = segs.back().map(|s| s.id + 1).unwrap_or(next_segment);
        state.next_index = next_index;

        let mut j = Journal {
            dir,
            limits,
            segs,
            active,
            state,
            next_seq,
            unsynced: 0,
            unsynced_since: None,
            acks_pending: 0,
            acks_since: None,
            scratch: Vec::with_capacity(256),
            read_buf,
            appended: 0,
            bytes_written: 0,
            fsyncs,
            closed: false,
        };
        // Persist what recovery changed (counters, clamped ack) before anything else can be lost.
        j.persist_state()?;
        j.enforce_size(0)?;
        rec.segments = j.segs.len();
        rec.depth = j.depth();
        info!(
            dir = %j.dir.display(),
            segments = rec.segments,
            depth = rec.depth,
            truncated = rec.truncations.len(),
            lost_records = rec.lost_records,
            "journal open"
        );
        Ok((j, rec))
    }

    /// The seq the next record of `thing` must have at least (0 for a thing never seen).
    pub fn next_seq(&self, thing: &str) -> u64 {
        self.next_seq.get(thing).copied().unwrap_or(0)
    }

    /// Appends a record; returns the cursor just after it. `rec.seq` must not be below
    /// [`Journal::next_seq`] for its thing (gaps are allowed, going back is not).
    pub fn append(&mut self, rec: &Record) -> Result<Cursor> {
        let next = self.next_seq(&rec.thing);
        if rec.seq < next {
            return Err(JournalError::SeqRegression {
                thing: rec.thing.clone(),
                seq: rec.seq,
                next,
            });
        }
        self.scratch.clear();
        let n = format::encode_record(rec, &mut self.scratch).map_err(|source| {
            JournalError::Encode {
                thing: rec.thing.clone(),
                source,
            }
        })? as u64;

        if self.active().len + n > self.limits.segment_bytes {
            self.rotate()?;
            // Rotation is rare (once per segment): a cheap moment to apply the age bound.
            self.expire_at(Instant::now())?;
        }
        self.enforce_size(n)?;

        let active_len = self.active().len;
        if let Err(e) = self.active.write_all(&self.scratch) {
            // A partial write would leave garbage that every later frame sits behind: cut it off.
            let path = self.active_path();
            if let Err(e2) = self.active.set_len(active_len) {
                error!(file = %path.display(), offset = active_len, error = %e2, "cannot undo partial append");
            }
            return Err(JournalError::io(path, "append")(e));
        }
        self.bytes_written += n;
        self.appended += 1;
        let seg = self.active_mut();
        seg.len += n;
        seg.records += 1;
        seg.touched = Instant::now();
        let cursor = seg.end();
        self.state.next_index = cursor.index;
        // The thing's entry is only created once per thing; afterwards it is updated in place.
        match self.next_seq.get_mut(&rec.thing) {
            Some(s) => *s = rec.seq + 1,
            None => {
                self.next_seq.insert(rec.thing.clone(), rec.seq + 1);
                // A new thing is made durable before its first seq can be published: otherwise a
                // power cut before the first sync would leave no trace of it, the unclean-open skip
                // (below, in open) would not know to skip it, and its seqs would start again at 0
                // under readings consumers already have. Once per thing: bounded SD writes.
                self.persist_state()?;
            }
        }

        self.unsynced += 1;
        self.unsynced_since.get_or_insert_with(Instant::now);
        let due = match self.limits.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Every { records, interval } => {
                self.unsynced >= records
                    || self.unsynced_since.is_some_and(|t| t.elapsed() >= interval)
            }
            FsyncPolicy::Never => false,
        };
        if due {
            self.sync_data()?;
        }
        Ok(cursor)
    }

    /// Where reading starts: just after the last acknowledged record.
    pub fn ack_cursor(&self) -> Cursor {
        self.state.ack
    }

    /// Up to `max` records after `from`, in append order, each with the cursor just after it. An empty
    /// result means `from` is at the end. A cursor into a segment that was dropped continues at the
    /// oldest remaining record. Corruption found here (damage after open) is cut off and counted; the
    /// read goes on with the next segment.
    pub fn read_from(&mut self, from: Cursor, max: usize) -> Result<Vec<(Cursor, Record)>> {
        let mut out = Vec::new();
        let mut pos = from;
        while out.len() < max {
            let Some(i) = self.segs.iter().position(|s| s.id >= pos.segment) else {
                break;
            };
            let seg = self.segs[i].clone();
            if seg.id > pos.segment || pos.offset < HEADER_LEN as u64 {
                pos = seg.start();
            }
            if pos.offset >= seg.len {
                if i + 1 == self.segs.len() {
                    break;
                }
                pos = Cursor {
                    segment: seg.id + 1,
                    offset: 0,
                    index: 0,
                };
                continue;
            }
            let path = segment_path(&self.dir, seg.id);
            let mut file = File::open(&path).map_err(JournalError::io(&path, "open"))?;
            file.seek(SeekFrom::Start(pos.offset))
                .map_err(JournalError::io(&path, "seek"))?;
            let mut r = BufReader::with_capacity(READ_BUF, file);
            while out.len() < max && pos.offset < seg.len {
                match next_frame(&mut r, pos.offset, seg.len, &mut self.read_buf) {
                    Ok(Next::Record(record, n)) => {
                        pos.offset += n;
                        pos.index += 1;
                        out.push((pos, record));
                    }
                    Ok(Next::Undecodable(e, n)) => {
                        // Counted at open; skipped silently here because the same range may be read
                        // again after a reconnect.
                        debug!(file = %path.display(), offset = pos.offset, error = %e, "skipping undecodable record");
                        pos.offset += n;
                        pos.index += 1;
                    }
                    Err(ReadError::Io(e)) => return Err(JournalError::io(&path, "read")(e)),
                    Err(ReadError::Frame(e)) => {
                        self.cut_at_runtime(i, pos, &e)?;
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Acknowledges everything before `upto` (a cursor returned by [`Journal::append`] or
    /// [`Journal::read_from`]). Acking an older cursor again is a no-op. Persisted per the ack policy.
    pub fn ack(&mut self, upto: Cursor) -> Result<()> {
        if upto <= self.state.ack {
            return Ok(());
        }
        let end = self.end();
        if upto > end {
            return Err(JournalError::AckBeyondEnd { cursor: upto, end });
        }
        self.state.ack = upto;
        self.acks_pending += 1;
        self.acks_since.get_or_insert_with(Instant::now);

        // Whole acknowledged segments go; the active one stays (it is where appends go).
        let done = self
            .segs
            .iter()
            .take(self.segs.len() - 1)
            .take_while(|s| s.end() <= upto)
            .count();
        if done > 0 {
            return self.remove_front(done, "acknowledged");
        }
        if self.acks_pending >= self.limits.ack_persist_every
            || self
                .acks_since
                .is_some_and(|t| t.elapsed() >= self.limits.ack_persist_interval)
        {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Periodic housekeeping, e.g. once a second: the age bound, and the time-based halves of the
    /// fsync and ack policies (which otherwise only run on append/ack).
    pub fn tick(&mut self) -> Result<()> {
        self.expire_at(Instant::now())?;
        if let FsyncPolicy::Every { interval, .. } = self.limits.fsync {
            if self.unsynced_since.is_some_and(|t| t.elapsed() >= interval) {
                self.sync_data()?;
            }
        }
        if self
            .acks_since
            .is_some_and(|t| t.elapsed() >= self.limits.ack_persist_interval)
        {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Forces appended records and the ack cursor to disk (e.g. on shutdown).
    pub fn sync(&mut self) -> Result<()> {
        self.sync_data()?;
        if self.acks_pending > 0 {
            self.persist_state()?;
        }
        Ok(())
    }

    /// Drops sealed segments, oldest first, not written to for longer than the age bound as of
    /// `now` (monotonic; time spent powered off does not count). Returns the number of
    /// unacknowledged records dropped.
    pub fn expire_at(&mut self, now: Instant) -> Result<u64> {
        let max_age = self.limits.max_age;
        let old = self
            .segs
            .iter()
            .take(self.segs.len() - 1)
            .take_while(|s| now.saturating_duration_since(s.touched) > max_age)
            .count();
        if old == 0 {
            return Ok(0);
        }
        let before = self.state.dropped;
        self.remove_front(old, "older than the age bound")?;
        Ok(self.state.dropped - before)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            depth: self.depth(),
            bytes: self.segs.iter().map(|s| s.len).sum(),
            segments: self.segs.len(),
            dropped: self.state.dropped,
            lost_records: self.state.lost_records,
            lost_bytes: self.state.lost_bytes,
            appended: self.appended,
            bytes_written: self.bytes_written,
            fsyncs: self.fsyncs,
        }
    }

    // ---- internals ----

    fn active(&self) -> &Segment {
        // open() always leaves one segment and nothing removes the last one.
        &self.segs[self.segs.len() - 1]
    }

    fn active_mut(&mut self) -> &mut Segment {
        let i = self.segs.len() - 1;
        &mut self.segs[i]
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.dir, self.active().id)
    }

    fn end(&self) -> Cursor {
        self.active().end()
    }

    fn depth(&self) -> u64 {
        self.segs
            .iter()
            .map(|s| unacked_in(s, self.state.ack))
            .sum()
    }

    fn sync_data(&mut self) -> Result<()> {
        if self.unsynced == 0 {
            return Ok(());
        }
        let path = self.active_path();
        self.active
            .sync_data()
            .map_err(JournalError::io(path, "fdatasync"))?;
        self.fsyncs += 1;
        self.unsynced = 0;
        self.unsynced_since = None;
        Ok(())
    }

    /// Seals the active segment (synced once, never written again) and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        let path = self.active_path();
        self.active
            .sync_data()
            .map_err(JournalError::io(path, "fdatasync"))?;
        self.fsyncs += 1;
        self.unsynced = 0;
        self.unsynced_since = None;
        let end = self.end();
        let (seg, file) = create_segment(&self.dir, end.segment + 1, end.index)?;
        self.fsyncs += 2;
        self.bytes_written += HEADER_LEN as u64;
        self.segs.push_back(seg);
        self.active = file;
        self.state.next_segment = end.segment + 2;
        debug!(segment = end.segment + 1, "journal segment started");
        Ok(())
    }

    /// Drops the oldest sealed segments until `incoming` more bytes fit under the size bound.
    fn enforce_size(&mut self, incoming: u64) -> Result<()> {
        let mut total: u64 = self.segs.iter().map(|s| s.len).sum::<u64>() + incoming;
        let mut n = 0;
        for s in self.segs.iter().take(self.segs.len() - 1) {
            if total <= self.limits.max_bytes {
                break;
            }
            total -= s.len;
            n += 1;
        }
        if n > 0 {
            self.remove_front(n, "over the size bound")?;
        }
        Ok(())
    }

    /// Removes the `n` oldest segments: counts what was unacknowledged in them, writes the state first
    /// (so the counts and seqs outlive the files), then unlinks them.
    fn remove_front(&mut self, n: usize, why: &str) -> Result<()> {
        let mut dropped = 0;
        for s in self.segs.iter().take(n) {
            dropped += unacked_in(s, self.state.ack);
        }
        if dropped > 0 {
            warn!(
                segments = n,
                dropped,
                reason = why,
                "journal dropping unacknowledged records"
            );
        }
        self.state.dropped += dropped;
        self.persist_state()?;
        for _ in 0..n {
            let Some(s) = self.segs.pop_front() else {
                break;
            };
            let path = segment_path(&self.dir, s.id);
            fs::remove_file(&path).map_err(JournalError::io(&path, "remove"))?;
            debug!(file = %path.display(), reason = why, "journal segment removed");
        }
        // Make the unlinks durable, so a dropped segment does not come back (and get counted twice).
        sync_dir(&self.dir)?;
        self.fsyncs += 1;
        Ok(())
    }

    /// A frame error found while reading segment `i` at `pos` after open (the SD card changed under
    /// us): cut the segment there, count what was behind the cut, and go on with the next segment.
    fn cut_at_runtime(&mut self, i: usize, pos: Cursor, e: &FrameError) -> Result<()> {
        if i + 1 == self.segs.len() {
            // Never cut the file being appended to; seal it first.
            self.rotate()?;
        }
        let seg = &mut self.segs[i];
        let path = segment_path(&self.dir, seg.id);
        let lost_bytes = seg.len - pos.offset;
        let lost_records = (seg.first_index + seg.records).saturating_sub(pos.index);
        error!(file = %path.display(), offset = pos.offset, error = %e, lost_records, lost_bytes, "corrupt journal record; rest of segment skipped");
        seg.len = pos.offset;
        seg.records -= lost_records;
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(JournalError::io(&path, "open for truncation"))?;
        f.set_len(pos.offset)
            .and_then(|_| f.sync_all())
            .map_err(JournalError::io(&path, "truncate"))?;
        self.fsyncs += 1;
        self.state.lost_records += lost_records;
        self.state.lost_bytes += lost_bytes;
        self.persist_state()
    }

    /// Writes the state file atomically: temp file, fdatasync, rename, directory sync.
    fn persist_state(&mut self) -> Result<()> {
        self.state.next_seq = self.next_seq.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let bytes = format::encode_state(&self.state).map_err(|source| JournalError::Encode {
            thing: String::new(),
            source,
        })?;
        let tmp = self.dir.join(STATE_TMP);
        let dst = self.dir.join(STATE_FILE);
        let mut f = File::create(&tmp).map_err(JournalError::io(&tmp, "create"))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_data())
            .map_err(JournalError::io(&tmp, "write"))?;
        fs::rename(&tmp, &dst).map_err(JournalError::io(&dst, "rename"))?;
        sync_dir(&self.dir)?;
        self.fsyncs += 2;
        self.bytes_written += bytes.len() as u64;
        self.acks_pending = 0;
        self.acks_since = None;
        Ok(())
    }
}

impl Journal {
    /// Syncs everything and marks the journal cleanly closed, so the next open reuses seqs exactly.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        self.sync_data()?;
        self.state.clean = true;
        self.persist_state()?;
        // Leave Drop with nothing to do.
        self.state.clean = false;
        self.closed = true;
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Err(e) = self.close_inner() {
            error!(error = %e, "journal close failed");
        }
    }
}

/// Room a segment must have left to be reused after open (one small record).
fn room_for_one() -> u64 {
    (format::FRAME_OVERHEAD + 64) as u64
}

fn unacked_in(s: &Segment, ack: Cursor) -> u64 {
    if ack.segment < s.id {
        s.records
    } else if ack.segment == s.id {
        (s.first_index + s.records).saturating_sub(ack.index)
    } else {
        0
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.{SEGMENT_EXT}"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(JournalError::io(dir, "list"))? {
        let entry = entry.map_err(JournalError::io(dir, "list"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(&format!(".{SEGMENT_EXT}")) else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(id) if stem.len() == 20 => ids.push(id),
            _ => {
                warn!(file = %entry.path().display(), "ignoring a file that is not a journal segment")
            }
        }
    }
    Ok(ids)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(JournalError::io(dir, "fsync directory"))
}

fn create_segment(dir: &Path, id: u64, first_index: u64) -> Result<(Segment, File)> {
    let path = segment_path(dir, id);
    let mut f = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(JournalError::io(&path, "create"))?;
    let h = format::encode_header(&SegmentHeader {
        segment: id,
        first_index,
    });
    f.write_all(&h)
        .and_then(|_| f.sync_data())
        .map_err(JournalError::io(&path, "write header"))?;
    // The new name must be durable before records in it are acknowledged by anyone.
    sync_dir(dir)?;
    Ok((
        Segment {
            id,
            first_index,
            len: HEADER_LEN as u64,
            records: 0,
            touched: Instant::now(),
        },
        f,
    ))
}

fn load_state(dir: &Path, rec: &mut Recovery) -> Result<State> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(b) => match format::decode_state(&b) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Replaced by rename, so this is media damage: start over. Everything still in the
                // segments is resent (consumers dedupe by seq); seqs are recovered from the segments.
                error!(file = %path.display(), error = %e, "journal state unreadable; ack cursor and counters reset");
                rec.state_reset = true;
                Ok(State::default())
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            rec.fresh = true;
            Ok(State::default())
        }
        Err(e) => Err(JournalError::io(path, "read")(e)),
    }
}

enum Next {
    Record(Record, u64),
    /// A frame with a valid CRC whose payload does not decode, and its length.
    Undecodable(FrameError, u64),
}

enum ReadError {
    Io(io::Error),
    Frame(FrameError),
}

/// Reads the frame at `offset` of a segment whose valid content ends at `end` (`offset < end`).
fn next_frame(
    r: &mut impl Read,
    offset: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> std::result::Result<Next, ReadError> {
    let have = (end - offset) as usize;
    if have < format::FRAME_OVERHEAD {
        return Err(ReadError::Frame(FrameError::Short {
            need: format::FRAME_OVERHEAD,
            have,
        }));
    }
    let mut head = [0u8; format::FRAME_OVERHEAD];
    r.read_exact(&mut head).map_err(ReadError::Io)?;
    let h = format::parse_frame_header(&head).map_err(ReadError::Frame)?;
    let total = format::FRAME_OVERHEAD + h.len;
    if have < total {
        return Err(ReadError::Frame(FrameError::Short { need: total, have }));
    }
    buf.resize(h.len, 0);
    r.read_exact(buf).map_err(ReadError::Io)?;
    format::check_payload(&h, buf).map_err(ReadError::Frame)?;
    Ok(match format::decode_payload(buf) {
        Ok(rec) => Next::Record(rec, total as u64),
        Err(e) => Next::Undecodable(e, total as u64),
    })
}

/// Scans one segment at open: checks the header and every frame, cuts a torn or corrupt tail, and
/// returns what the segment holds, or `None` when the whole file was unusable and removed.
#[allow(clippy::too_many_arguments)]
fn scan_segment(
    path: &Path,
    id: u64,
    is_last: bool,
    next_seq: &mut BTreeMap<String, u64>,
    buf: &mut Vec<u8>,
    rec: &mut Recovery,
    state: &mut State,
    fsyncs: &mut u64,
) -> Result<Option<Segment>> {
    let file = File::open(path).map_err(JournalError::io(path, "open"))?;
    let file_len = file
        .metadata()
        .map_err(JournalError::io(path, "stat"))?
        .len();
    let mut r = BufReader::with_capacity(READ_BUF, file);
    let mut head = [0u8; HEADER_LEN];
    let header = if file_len < HEADER_LEN as u64 {
        Err(format::HeaderError::Short(file_len as usize))
    } else {
        r.read_exact(&mut head)
            .map_err(JournalError::io(path, "read header"))?;
        format::decode_header(&head)
    };
    let header = match header {
        Ok(h) if h.segment == id => h,
        other => {
            let why = match other {
                Ok(h) => format!("header names segment {}, file name {id}", h.segment),
                Err(e) => e.to_string(),
            };
            // The last segment with a short header is a creation cut by a power cut: nothing in it.
            if is_last && file_len < HEADER_LEN as u64 {
                warn!(file = %path.display(), error = %why, "removing a segment whose creation was cut");
            } else {
                error!(file = %path.display(), offset = 0, error = %why, lost_bytes = file_len, "removing a journal segment with a bad header");
                state.lost_bytes += file_len;
            }
            drop(r);
            fs::remove_file(path).map_err(JournalError::io(path, "remove"))?;
            rec.removed.push(path.to_path_buf());
            return Ok(None);
        }
    };
    let mut seg = Segment {
        id,
        first_index: header.first_index,
        len: HEADER_LEN as u64,
        records: 0,
        touched: Instant::now(),
    };
    while seg.len < file_len {
        match next_frame(&mut r, seg.len, file_len, buf) {
            Ok(Next::Record(record, n)) => {
                let e = next_seq.entry(record.thing).or_insert(0);
                *e = (*e).max(record.seq + 1);
                seg.records += 1;
                seg.len += n;
            }
            Ok(Next::Undecodable(e, n)) => {
                warn!(file = %path.display(), offset = seg.len, error = %e, "undecodable journal record; it will be skipped");
                rec.undecodable += 1;
                seg.records += 1;
                seg.len += n;
            }
            Err(ReadError::Io(e)) => return Err(JournalError::io(path, "read")(e)),
            Err(ReadError::Frame(e)) => {
                let lost_bytes = file_len - seg.len;
                let kind = if e.is_torn() { "torn" } else { "corrupt" };
                warn!(file = %path.display(), offset = seg.len, error = %e, lost_bytes, "journal segment has a {kind} tail; truncating, everything before it is kept");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(JournalError::io(path, "open for truncation"))?;
                f.set_len(seg.len)
                    .and_then(|_| f.sync_all())
                    .map_err(JournalError::io(path, "truncate"))?;
                *fsyncs += 1;
                state.lost_bytes += lost_bytes;
                rec.truncations.push(Truncation {
                    file: path.to_path_buf(),
                    offset: seg.len,
                    lost_bytes,
                    reason: e.to_string(),
                });
                break;
            }
        }
    }
    Ok(Some(seg))
}
