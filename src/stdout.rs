//! The process's stdout, shared by the JSON access log and a usage ledger on stdout
//! (`"usageLog": "-"`): each writer hands over whole lines, written and flushed under the one
//! lock std keeps for stdout, so lines of the two never interleave.

use std::io::Write;

/// Writes `lines` (whole lines, each ending in a newline) and flushes, holding stdout's lock
/// for both, so no other line lands inside them.
pub fn write_lines(lines: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(lines).and_then(|_| out.flush())
}
