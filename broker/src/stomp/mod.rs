//! STOMP 1.2 (and 1.1/1.0 negotiation): frame values and the wire codec. Pure: no sockets,
//! no broker state.

pub mod codec;
pub mod frame;

pub use codec::{CodecError, Limits, StompCodec};
pub use frame::{Command, Frame, HeartBeat, Inbound, Version};
