//! The wire format. One frame:
//!
//! ```text
//! +----------------+---------+-----------------------------------------+
//! | len: u32 LE    | version | body: postcard(id: u32, message)        |
//! +----------------+---------+-----------------------------------------+
//!   len counts version + body (>= 1, <= MAX_FRAME)
//! ```
//!
//! The id comes first in the body in every version, so a daemon can answer a frame of a version
//! it does not speak (or a message it does not know) with an error carrying the right id.
//! A length out of range cannot be skipped safely (the stream has lost its boundaries): the
//! reader reports it and the connection is closed after the error reply.

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::msg::{ErrorKind, ErrorReply, Request, Response};

/// The protocol version this crate speaks.
/// 2: `VmInfo` gained `restarts` and `failed`, `Response::Acquired` answers `Acquire`.
pub const VERSION: u8 = 2;
/// Largest `len` accepted: a list of a few hundred VMs fits many times over; anything bigger is
/// a broken or hostile peer, and refusing it bounds what one connection can make the daemon allocate.
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes before the body: length + version.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame length 0: a frame has at least its version byte")]
    Empty,
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error(
        "protocol version {got} (request id {id:?}) is not supported: this side speaks {VERSION}"
    )]
    Version { id: Option<u32>, got: u8 },
    #[error("frame body has no request id: {0}")]
    NoId(#[source] postcard::Error),
    #[error("request {id}: payload is not a known message: {source}")]
    Message {
        id: u32,
        #[source]
        source: postcard::Error,
    },
    #[error("request {id}: {extra} bytes after the message")]
    Trailing { id: u32, extra: usize },
}

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("message encodes to {len} bytes, over the frame limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message does not encode: {0}")]
    Postcard(#[from] postcard::Error),
}

/// A frame with its boundaries found but its body not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub version: u8,
    pub body: Vec<u8>,
}

/// Encodes `msg` with `id` into one complete frame.
pub fn encode<T: Serialize>(id: u32, msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    out[4] = VERSION;
    let out = postcard::to_extend(&(id, msg), out)?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(EncodeError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut out = out;
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

pub fn encode_request(id: u32, req: &Request) -> Result<Vec<u8>, EncodeError> {
    encode(id, req)
}

/// Never fails for the daemon's own replies in practice; a reply that would not fit (an absurd
/// list) becomes an error reply so the client still gets exactly one answer.
pub fn encode_response(id: u32, resp: &Response) -> Vec<u8> {
    match encode(id, resp) {
        Ok(f) => f,
        Err(e) => {
            let err = Response::Error(ErrorReply::new(ErrorKind::Internal, e.to_string()));
            // A short error always fits and always encodes.
            encode(id, &err).unwrap_or_default()
        }
    }
}

/// Finds the first frame in `buf`: `Ok(None)` if more bytes are needed, else the frame and the
/// number of bytes it used. Never allocates more than [`MAX_FRAME`].
pub fn split_frame(buf: &[u8]) -> Result<Option<(RawFrame, usize)>, FrameError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let mut l = [0u8; 4];
    l.copy_from_slice(len_bytes);
    let len = u32::from_le_bytes(l) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let Some(frame) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((
        RawFrame {
            version: frame[0],
            body: frame[1..].to_vec(),
        },
        4 + len,
    )))
}

/// Decodes a frame's body as `T`, checking the version and that nothing follows the message.
pub fn decode<T: DeserializeOwned>(frame: &RawFrame) -> Result<(u32, T), DecodeError> {
    let id = postcard::take_from_bytes::<u32>(&frame.body);
    if frame.version != VERSION {
        return Err(DecodeError::Version {
            id: id.ok().map(|(id, _)| id),
            got: frame.version,
        });
    }
    let (id, rest) = id.map_err(DecodeError::NoId)?;
    let (msg, rest) = postcard::take_from_bytes::<T>(rest)
        .map_err(|source| DecodeError::Message { id, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing {
            id,
            extra: rest.len(),
        });
    }
    Ok((id, msg))
}

pub fn decode_request(frame: &RawFrame) -> Result<(u32, Request), DecodeError> {
    decode(frame)
}

pub fn decode_response(frame: &RawFrame) -> Result<(u32, Response), DecodeError> {
    decode(frame)
}

impl DecodeError {
    /// The error reply the daemon sends for this frame, with the id to send it under (0 when the
    /// frame had none readable).
    pub fn reply(&self) -> (u32, Response) {
        let (id, kind) = match self {
            DecodeError::Version { id, .. } => (id.unwrap_or(0), ErrorKind::UnsupportedVersion),
            DecodeError::NoId(_) => (0, ErrorKind::BadFrame),
            DecodeError::Message { id, .. } | DecodeError::Trailing { id, .. } => {
                (*id, ErrorKind::UnknownMessage)
            }
        };
        (id, Response::Error(ErrorReply::new(kind, self.to_string())))
    }
}

impl FrameError {
    /// The last reply before the connection is closed.
    pub fn reply(&self) -> Response {
        Response::Error(ErrorReply::new(ErrorKind::BadFrame, self.to_string()))
    }
}

/// Accumulates bytes from a stream (blocking or async, the caller's business) and yields frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the stream is
    /// unusable (its boundaries are lost) and the reader keeps returning the same error.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, FrameError> {
        match split_frame(&self.buf)? {
            Some((frame, used)) => {
                self.buf.drain(..used);
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Bytes received but not yet part of a complete frame (a peer that closes with some is
    /// reported as a truncated frame).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}
