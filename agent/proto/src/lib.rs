//! The agent ↔ `betaas-vmd` protocol: the only thing both binaries share about VMs.
//!
//! The agent is a static binary and libvirt cannot be linked statically, so VM management lives
//! in its own daemon; they talk over a local Unix socket, one request → one response, in
//! length-prefixed, versioned postcard frames (see [`frame`]). This crate is pure: no runtime,
//! no sockets; [`blocking`] drives any `Read + Write` for callers that want that.
//!
//! A request the daemon cannot read (another version, an unknown message, trailing bytes) is
//! answered with [`Response::Error`] under the request's id; a frame whose length is out of
//! range is answered with `BadFrame` and the connection is closed.

pub mod blocking;
pub mod frame;
pub mod msg;

pub use frame::{
    decode, decode_request, decode_response, encode, encode_request, encode_response, split_frame,
    DecodeError, EncodeError, FrameError, FrameReader, RawFrame, HEADER_LEN, MAX_FRAME, VERSION,
};
pub use msg::{
    Capability, ErrorKind, ErrorReply, PortMap, ProbeResult, Request, Response, VirtKind, VmInfo,
    VmState, VmStats, WarFile,
};
