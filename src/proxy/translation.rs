//! A Messages request translated for a chat completions backend: made once by `messages`
//! before any backend is asked, carried with each backend's answer (`answer::Source`).

use crate::translate::anthropic::response::Reply;
use serde_json::Value;

/// A Messages request, translated once for every backend tried.
pub struct Translation {
    /// The chat completion request, model still to be set per backend.
    pub(super) chat: Value,
    /// What the answer's translation needs from the request.
    pub(super) reply: Reply,
    /// The client asked for a stream.
    pub(super) stream: bool,
}
