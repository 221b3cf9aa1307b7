//! The journal's on-disk record format. Pure: bytes in, values out; no files, no clock.
//!
//! A segment file is a header followed by frames:
//!
//! ```text
//! header (28 bytes): magic "BTJL" | version u8 | 3 reserved zero bytes | segment id u64 LE
//!                    | index of the segment's first record u64 LE | CRC32 of the previous 24 bytes u32 LE
//! frame:             len u32 LE | CRC32 of (len bytes ++ payload) u32 LE | payload (len bytes, postcard Record)
//! ```
//!
//! The CRC covers the length too, so a flipped bit in the length is caught instead of sending the reader
//! into the middle of the next record. `len` is capped at [`MAX_PAYLOAD`] so a corrupt length can never
//! make a reader allocate gigabytes. The agent's `journal::store` writes and reads files with it;
//! the fuzz crate (`agent/fuzz`) feeds it arbitrary bytes.

use serde::{Deserialize, Serialize};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"BTJL";
/// Bumped on any incompatible change of the header or frame layout. New [`Body`] variants appended at
/// the end of the enum do not need a bump: postcard encodes the variant index, old records still decode.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the segment header in bytes.
pub const HEADER_LEN: usize = 28;
/// Bytes of framing in front of every payload (length + CRC).
pub const FRAME_OVERHEAD: usize = 8;
/// Largest payload accepted. A reading is ~30–60 bytes; a multi-value reading with 16 quantities is well
/// under 1 KiB. 4 KiB leaves room for future kinds while bounding what a corrupt length can make a
/// reader allocate, and lets tests use small segments.
pub const MAX_PAYLOAD: usize = 4 * 1024;

/// One journaled item: what the publisher sends and what a consumer dedupes on (`thing`, `seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The thing's id from the config (a topic level).
    pub thing: String,
    /// Per thing, strictly increasing across restarts; the journal refuses a seq that goes back.
    pub seq: u64,
    /// Unix time in milliseconds from the gateway's clock when the reading was taken.
    pub ts_ms: u64,
    pub body: Body,
}

/// What a record carries. Append new variants at the end only (postcard encodes the variant's index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// One value, e.g. a TMP105 temperature.
    Reading { value: f64, unit: String },
    /// Several values taken together, e.g. a BME280's temperature, humidity and pressure.
    Readings(Vec<Quantity>),
}

/// One named value of a multi-value reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantity {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// The fixed-size start of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's id; also its file name. Ids only grow.
    pub segment: u64,
    /// Journal-wide index of the segment's first record. Records are numbered from 0 when the journal is
    /// created; a gap between one segment's last index and the next segment's first is a counted loss.
    pub first_index: u64,
}

/// Why bytes are not a valid frame. `Short` at the end of a file is a torn write; the others are corruption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("torn frame: needs {need} bytes, only {have} present")]
    Short { need: usize, have: usize },
    #[error("zero-length frame (unwritten or zeroed space)")]
    Empty,
    #[error("frame length {len} exceeds the maximum {max}")]
    Oversized { len: u32, max: usize },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    /// The frame is intact (CRC matches) but the payload is not a record this build understands, e.g.
    /// written by a newer agent. Only this record is skipped; the frames after it are still trusted.
    #[error("payload does not decode as a record: {0}")]
    Payload(String),
}

impl FrameError {
    /// True when the error means "the write never completed" rather than "the bytes were damaged".
    pub fn is_torn(&self) -> bool {
        matches!(self, FrameError::Short { .. })
    }
}

/// Why a segment header is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment header needs {HEADER_LEN} bytes, only {0} present")]
    Short(usize),
    #[error("bad magic {0:02x?} (not a journal segment)")]
    Magic([u8; 4]),
    #[error("format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u8),
    #[error("segment header CRC mismatch")]
    Checksum,
}

/// Why a record cannot be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("record payload is {len} bytes, the maximum is {MAX_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("postcard: {0}")]
    Postcard(#[from] postcard::Error),
}

/// A position between two records: everything before it was read (or acknowledged). The cursor returned
/// with a record is the one just after it, so it is both "ack up to here" and "read on from here".
/// Ordered by position; `index` (records before this position since the journal was created) grows with it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
    pub index: u64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}#{}", self.segment, self.offset, self.index)
    }
}

/// What the journal keeps outside its segments: the ack cursor and what must outlive deleted segments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    /// Everything before it was acknowledged by the broker.
    pub ack: Cursor,
    /// Records dropped unacknowledged by the size or age bound.
    pub dropped: u64,
    /// Records lost to corruption (counted when the damage is cut off, once).
    pub lost_records: u64,
    /// Bytes cut off torn or corrupt segments.
    pub lost_bytes: u64,
    /// Lower bounds for the next segment id and record index when no segment is left to tell.
    pub next_segment: u64,
    pub next_index: u64,
    /// Next seq per thing, so seqs keep growing after the segments that held them are deleted.
    pub next_seq: Vec<(String, u64)>,
    /// Written true only by a clean close. After anything else, unsynced records (already published,
    /// perhaps) may be gone from disk, so their seqs must not be handed out again.
    pub clean: bool,
}

/// First bytes of the state file.
pub const STATE_MAGIC: [u8; 4] = *b"BTJS";

/// The state file: magic, version, then one frame (length + CRC) holding the postcard-encoded state.
pub fn encode_state(s: &State) -> Result<Vec<u8>, EncodeError> {
    let payload = postcard::to_stdvec(s)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(EncodeError::TooLarge { len: payload.len() });
    }
    let mut out = Vec::with_capacity(5 + FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&STATE_MAGIC);
    out.push(FORMAT_VERSION);
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub fn decode_state(b: &[u8]) -> Result<State, FrameError> {
    match b.get(..5) {
        Some(m) if m[..4] == STATE_MAGIC && m[4] == FORMAT_VERSION => {}
        Some(_) => return Err(FrameError::Payload("not a journal state file".into())),
        None => {
            return Err(FrameError::Short {
                need: 5,
                have: b.len(),
            })
        }
    }
    let f = decode_frame(&b[5..])?;
    if f.len != b.len() - 5 {
        return Err(FrameError::Payload("trailing bytes after the state".into()));
    }
    postcard::from_bytes(f.payload).map_err(|e| FrameError::Payload(e.to_string()))
}

pub fn encode_header(h: &SegmentHeader) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&SEGMENT_MAGIC);
    b[4] = FORMAT_VERSION;
    b[8..16].copy_from_slice(&h.segment.to_le_bytes());
    b[16..24].copy_from_slice(&h.first_index.to_le_bytes());
    let crc = crc32fast::hash(&b[0..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_header(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let b: &[u8; HEADER_LEN] = b
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(HeaderError::Short(b.len()))?;
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != SEGMENT_MAGIC {
        return Err(HeaderError::Magic(magic));
    }
    if crc32fast::hash(&b[0..24]) != u32_at(b, 24) {
        return Err(HeaderError::Checksum);
    }
    // Checked after the CRC so a damaged version byte reports as damage, not as "newer format".
    if b[4] != FORMAT_VERSION {
        return Err(HeaderError::Version(b[4]));
    }
    Ok(SegmentHeader {
        segment: u64_at(b, 8),
        first_index: u64_at(b, 16),
    })
}

/// Appends one frame holding `rec` to `out`; returns the frame's length in bytes.
pub fn encode_record(rec: &Record, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_OVERHEAD]);
    let body = start + FRAME_OVERHEAD;
    if let Err(e) = postcard::to_io(rec, &mut *out) {
        out.truncate(start);
        return Err(e.into());
    }
    let len = out.len() - body;
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len });
    }
    let len_bytes = (len as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(&out[body..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..body].copy_from_slice(&h.finalize().to_le_bytes());
    Ok(FRAME_OVERHEAD + len)
}

/// The parsed first [`FRAME_OVERHEAD`] bytes of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length, already checked against [`MAX_PAYLOAD`].
    pub len: usize,
    pub crc: u32,
}

/// Parses a frame's length and CRC, rejecting lengths no valid frame can have. Lets a file reader learn
/// how many more bytes to read before it has them.
pub fn parse_frame_header(b: &[u8; FRAME_OVERHEAD]) -> Result<FrameHeader, FrameError> {
    let len = u32_at(b, 0);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::Oversized {
            len,
            max: MAX_PAYLOAD,
        });
    }
    Ok(FrameHeader {
        len: len as usize,
        crc: u32_at(b, 4),
    })
}

/// Checks a payload against its frame header.
pub fn check_payload(h: &FrameHeader, payload: &[u8]) -> Result<(), FrameError> {
    let mut c = crc32fast::Hasher::new();
    c.update(&(h.len as u32).to_le_bytes());
    c.update(payload);
    let computed = c.finalize();
    if computed != h.crc {
        return Err(FrameError::Checksum {
            stored: h.crc,
            computed,
        });
    }
    Ok(())
}

/// Decodes a CRC-checked payload.
pub fn decode_payload(payload: &[u8]) -> Result<Record, FrameError> {
    match postcard::take_from_bytes::<Record>(payload) {
        // Trailing bytes inside a CRC-valid frame mean the writer and this reader disagree on the type.
        Ok((rec, [])) => Ok(rec),
        Ok((_, rest)) => Err(FrameError::Payload(format!(
            "{} trailing bytes after the record",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Payload(e.to_string())),
    }
}

/// A frame found at the start of a byte slice: its payload (CRC checked) and its total length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub payload: &'a [u8],
    pub len: usize,
}

/// Finds the frame at the start of `b` and checks its CRC, without decoding the payload.
pub fn decode_frame(b: &[u8]) -> Result<Frame<'_>, FrameError> {
    let head: &[u8; FRAME_OVERHEAD] = b
        .get(..FRAME_OVERHEAD)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Short {
            need: FRAME_OVERHEAD,
            have: b.len(),
        })?;
    let h = parse_frame_header(head)?;
    let total = FRAME_OVERHEAD + h.len;
    let payload = b.get(FRAME_OVERHEAD..total).ok_or(FrameError::Short {
        need: total,
        have: b.len(),
    })?;
    check_payload(&h, payload)?;
    Ok(Frame {
        payload,
        len: total,
    })
}

/// Decodes the record framed at the start of `b`; returns it and the number of bytes it took.
pub fn decode_record(b: &[u8]) -> Result<(Record, usize), FrameError> {
    let f = decode_frame(b)?;
    Ok((decode_payload(f.payload)?, f.len))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            thing: "t1".into(),
            seq,
            ts_ms: 1_764_000_000_000 + seq,
            body: Body::Reading {
                value: 21.5,
                unit: "°C".into(),
            },
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            segment: 7,
            first_index: 12345,
        };
        let b = encode_header(&h);
        assert_eq!(decode_header(&b), Ok(h));
        assert_eq!(decode_header(&b[..10]), Err(HeaderError::Short(10)));
        for bit in 0..HEADER_LEN * 8 {
            let mut d = b;
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_header(&d).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn frame_round_trip() {
        let mut out = Vec::new();
        let n1 = encode_record(&rec(1), &mut out).expect("encode");
        let multi = Record {
            body: Body::Readings(vec![
                Quantity {
                    name: "temperature".into(),
                    value: -3.25,
                    unit: "°C".into(),
                },
                Quantity {
                    name: "pressure".into(),
                    value: 1013.2,
                    unit: "hPa".into(),
                },
            ]),
            ..rec(2)
        };
        let n2 = encode_record(&multi, &mut out).expect("encode");
        assert_eq!(out.len(), n1 + n2);
        let (a, la) = decode_record(&out).expect("first");
        assert_eq!((a, la), (rec(1), n1));
        let (b, lb) = decode_record(&out[la..]).expect("second");
        assert_eq!((b, lb), (multi, n2));
    }

    #[test]
    fn every_truncation_is_short() {
        let mut out = Vec::new();
        let n = encode_record(&rec(3), &mut out).expect("encode");
        for cut in 0..n {
            let e = decode_record(&out[..cut]).expect_err("truncated frame decoded");
            assert!(e.is_torn(), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut out = Vec::new();
        let n = encode_record(&rec(4), &mut out).expect("encode");
        for bit in 0..n * 8 {
            let mut d = out.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            // A flipped length bit may also make the frame look longer than the buffer (Short) or too
            // long (Oversized); any error is fine, a decoded record is not.
            assert!(decode_record(&d).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn oversized_and_empty_lengths_are_rejected_before_reading() {
        let mut b = [0u8; FRAME_OVERHEAD];
        assert_eq!(parse_frame_header(&b), Err(FrameError::Empty));
        b[0..4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(
            parse_frame_header(&b),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn too_large_record_is_refused_and_buffer_kept() {
        let mut out = vec![1, 2, 3];
        let big = Record {
            thing: "x".repeat(MAX_PAYLOAD + 1),
            ..rec(5)
        };
        assert!(matches!(
            encode_record(&big, &mut out),
            Err(EncodeError::TooLarge { .. })
        ));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn state_round_trip_and_damage() {
        let st = State {
            ack: Cursor {
                segment: 3,
                offset: 400,
                index: 17,
            },
            dropped: 5,
            lost_records: 1,
            lost_bytes: 30,
            next_segment: 4,
            next_index: 20,
            next_seq: vec![("t1".into(), 9), ("t2".into(), 11)],
            clean: true,
        };
        let b = encode_state(&st).expect("encode");
        assert_eq!(decode_state(&b), Ok(st));
        for cut in 0..b.len() {
            assert!(decode_state(&b[..cut]).is_err(), "cut at {cut}");
        }
        for bit in 0..b.len() * 8 {
            let mut d = b.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_state(&d).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn valid_frame_with_foreign_payload_is_a_payload_error() {
        // A CRC-valid frame whose payload is not a Record (e.g. a future variant index).
        let payload = [1u8, b'a', 0, 0, 9, 9];
        let len = (payload.len() as u32).to_le_bytes();
        let mut c = crc32fast::Hasher::new();
        c.update(&len);
        c.update(&payload);
        let mut b = len.to_vec();
        b.extend_from_slice(&c.finalize().to_le_bytes());
        b.extend_from_slice(&payload);
        assert!(matches!(decode_record(&b), Err(FrameError::Payload(_))));
    }
}
