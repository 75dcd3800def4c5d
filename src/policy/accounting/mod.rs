//! Accounting: the usage ledger (one JSON line per finished request) and the totals that
//! `/usage` and `modelmux usage` read back from it.

pub mod ledger;
pub mod totals;
