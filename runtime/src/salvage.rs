//! Reading a damaged store file for salvage: the file fed in overlapping
//! pieces to `baton_shared::salvage` (which decides what verifies), and the
//! found records read back one at a time. Both daemons' stores hold
//! entries as the same postcard records, so one reader serves both.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use baton_shared::salvage::{Finder, Loc, MAX_RECORD, Salvage, assemble, entry_at};
use baton_shared::{AgentId, Entry, PublicKey};

/// At most this many entries are indexed while a damaged file is read
/// (about 100 bytes of memory each; the rest are left in the file and
/// counted as not salvaged).
pub const SALVAGE_LIMIT: usize = 4_000_000;

/// Reads a damaged file without its database structures and returns where
/// what still verifies as `agent`'s chain under `key` lies in it. Only I/O
/// errors fail it; what the bytes are cannot.
pub fn scan_file(path: &Path, agent: &AgentId, key: &PublicKey) -> std::io::Result<Salvage> {
    const PIECE: usize = 8 * 1024 * 1024;
    let mut file = std::fs::File::open(path)?;
    let mut finder = Finder::new(agent, key, SALVAGE_LIMIT);
    let mut buf = vec![0u8; PIECE + MAX_RECORD];
    // `kept` bytes at the front carry over from the piece before; `base`
    // is the file offset of buf[0].
    let (mut kept, mut base) = (0usize, 0u64);
    loop {
        let n = file.read(&mut buf[kept..])?;
        if n == 0 {
            break;
        }
        let end = kept + n;
        finder.scan(base, &buf[..end]);
        let carry = end.min(MAX_RECORD);
        buf.copy_within(end - carry..end, 0);
        base += (end - carry) as u64;
        kept = carry;
    }
    Ok(assemble(finder))
}

/// Reads salvaged entries back from the damaged file, one at a time.
#[derive(Debug)]
pub struct Records {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl Records {
    pub fn open(path: &Path) -> std::io::Result<Records> {
        Ok(Records {
            file: std::fs::File::open(path)?,
            buf: vec![0; MAX_RECORD],
        })
    }

    /// The entry at `loc`, its signature stripped unless it verified. An
    /// `InvalidData` error when the file changed since it was scanned.
    pub fn read(&mut self, loc: &Loc) -> std::io::Result<Entry> {
        let n = self.file.read_at(&mut self.buf, loc.offset)?;
        let mut e = entry_at(&self.buf[..n]).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("salvaged entry {}: changed since it was found", loc.seq),
            )
        })?;
        if !loc.signed {
            e.sig = None;
        }
        Ok(e)
    }
}
