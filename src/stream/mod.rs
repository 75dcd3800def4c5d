//! Bodies in and out: the request body's model lookup and byte-faithful rewrite (`body`), the
//! answer streamed back (`relay`), the tokens it reports (`usage`) and the usage modelmux asked
//! for hidden again (`usage_strip`), and the Messages API's own usage (`messages_usage`).

pub mod body;
pub mod messages_usage;
pub mod relay;
pub mod usage;
pub mod usage_strip;
// `usage` read from a JSON answer without building its tree (its borrowed `Text` also serves
// the translated stream's chunk reader).
pub mod usage_json;
