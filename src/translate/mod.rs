//! Protocol translators: pure functions and state machines from one API's wire format to
//! another's, with no sockets, so each is tested byte for byte on its own.

pub mod anthropic;
