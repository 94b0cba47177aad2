//! Helpers shared by the crate's tests.

use bytes::Bytes;

use crate::output::TS_PACKET_LEN;

/// `packets` TS packets, each tagged with `tag` after the sync byte (chunks whose bytes
/// say which chunk they came from).
pub fn ts(tag: u32, packets: usize) -> Bytes {
    let mut out = Vec::with_capacity(packets * TS_PACKET_LEN);
    for _ in 0..packets {
        let mut packet = [0u8; TS_PACKET_LEN];
        packet[0] = 0x47;
        packet[1..5].copy_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&packet);
    }
    Bytes::from(out)
}
