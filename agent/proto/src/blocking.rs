//! A blocking client over any `Read + Write` (a `std::os::unix::net::UnixStream` in practice):
//! what the daemon's tests and a shell-side tool use. An async caller does the same with
//! [`crate::FrameReader`] on its own stream.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::frame::{
    decode_response, encode_request, DecodeError, EncodeError, FrameError, FrameReader,
};
use crate::msg::{Request, Response};

#[derive(Debug, Error)]
pub enum CallError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("request: {0}")]
    Encode(#[from] EncodeError),
    #[error("reply frame: {0}")]
    Frame(#[from] FrameError),
    #[error("reply: {0}")]
    Decode(#[from] DecodeError),
    #[error("the daemon closed the connection before replying")]
    Closed,
    #[error("reply to request {got}, expected {want}")]
    WrongId { want: u32, got: u32 },
}

/// One connection, requests numbered from 1.
pub struct Client<S> {
    stream: S,
    reader: FrameReader,
    next_id: u32,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            reader: FrameReader::new(),
            next_id: 1,
        }
    }

    /// Sends `req` and waits for its reply (an error reply is `Ok(Response::Error(_))`).
    pub fn call(&mut self, req: &Request) -> Result<Response, CallError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stream.write_all(&encode_request(id, req)?)?;
        self.stream.flush()?;
        let (got, resp) = self.read_reply()?;
        if got != id {
            return Err(CallError::WrongId { want: id, got });
        }
        Ok(resp)
    }

    /// Sends raw bytes (tests of the daemon's handling of broken input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), CallError> {
        self.stream.write_all(bytes)?;
        Ok(self.stream.flush()?)
    }

    pub fn read_reply(&mut self) -> Result<(u32, Response), CallError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = self.reader.next_frame()? {
                return Ok(decode_response(&frame)?);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(CallError::Closed);
            }
            self.reader.push(&chunk[..n]);
        }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}
