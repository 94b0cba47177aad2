//! What swarm nodes say to each other, and its wire encoding.
//!
//! ```text
//! message = type:u8 fields
//!   0x01 Hello        peer
//!   0x02 Peers        count:v peer*count                       count ≤ MAX_PEERS_PER_MESSAGE
//!   0x03 Subscribe    stripe:u8 starting:u8 (0 or 1) from_seq:v peer
//!   0x04 Accept       stripe:u8 sends_from:v
//!   0x05 Redirect     stripe:u8 keyframe:v count:v peer*count  count ≤ MAX_PEERS_PER_MESSAGE
//!   0x06 Unsubscribe  stripe:u8
//!   0x07 Have         latest:v recent:u64 BE spare_home:u8 spare_lend:u8 home_depth:u8
//!                     home_leaves:u8
//!   0x08 Request      count:v seq:v*count                      count ≤ MAX_REQUEST
//!   0x09 Chunk        hops:u8 chunk                            (layout in `chunk`)
//!   0x0a Leave
//!   0x0b Upstream     stripe:u8 peer
//!   0x0c Declined     count:v seq:v*count                      count ≤ MAX_REQUEST
//! peer = node id (32 bytes) | family:u8 (4 or 6) | ip (4 or 16 bytes) | port:u16 BE
//!        | upload_kbps:v | relay:u8 (0 or 1)
//! v = QUIC variable-length integer (RFC 9000 §16): 1, 2, 4 or 8 bytes, values < 2^62.
//! ```
//! `recent` is a bitmap whose bits are mostly set, so it is sent at its full 8 bytes; a
//! varint would need 8 bytes anyway and could not hold bits 62 and 63. An IPv6 address's
//! flow label and scope id are not sent: they mean nothing on another host.
//!
//! The transport delivers each message whole (one transport message per swarm message), so
//! the encoding has no length prefix, and bytes after the end of a message are an error.
//! Decoding never panics and checks every bound before allocating for it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use rill_transport::wire::{varint_len, Reader, Writer, VARINT_MAX};

use crate::chunk::{Chunk, ChunkError};
use crate::NodeId;

/// A node as others learn of it (peer exchange, redirects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// Upload capacity the node offers to the swarm (measured or configured), kbit/s.
    pub upload_kbps: u32,
    /// An always-on relay (placed near the roots of the trees).
    pub relay: bool,
}

/// Availability summary: the newest chunk held and which of the `HAVE_WINDOW` chunks
/// before it are held (bit i = seq `latest - 1 - i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Have {
    pub latest: u64,
    pub recent: u64,
    /// Free child slots in the sender's home stripe (where it is interior).
    pub spare_home: u8,
    /// Slots the sender lends to leaves of its other stripes.
    pub spare_lend: u8,
    /// The sender's depth in its home stripe's tree: overlay hops of the live chunks its
    /// parent there sends it (1 under the publisher). 0 when it does not know it, or it
    /// changed lately: a node deeper in that tree may move under the sender.
    pub home_depth: u8,
    /// Leaves among the sender's children in its home stripe: a full sender gives a leaf's
    /// slot to a node that forwards the stripe (SplitStream's push-down).
    pub home_leaves: u8,
}

impl Have {
    /// The sender has a free child slot of either kind: its children leave some of its
    /// upload unused.
    pub fn has_free_slots(&self) -> bool {
        self.spare_home > 0 || self.spare_lend > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First words to a bootstrap or newly learned peer: who I am. Answered with `Peers`.
    Hello { info: PeerInfo },
    /// Peer exchange: some peers the sender knows (bounded by `MAX_PEERS_PER_MESSAGE`).
    Peers { peers: Vec<PeerInfo> },
    /// "Be my parent in this stripe."
    Subscribe {
        stripe: u8,
        /// The sender holds nothing of this stripe yet: send it a keyframe group (fast
        /// join). A node changing parents leaves it unset.
        starting: bool,
        /// Where the new parent starts sending the stripe.
        /// - Not `starting` (changing parents): the first seq of this stripe the sender
        ///   lacks (the newest it holds plus the stripe count). The new parent sends what it
        ///   holds from there, so the chunks a dead parent left undelivered come with the
        ///   new subscription instead of one pull at a time.
        /// - `starting`: the keyframe the sender started at, through its other stripes'
        ///   parents; before it has one, the newest keyframe a `Redirect` named, or 0. The
        ///   parent sends its group from there if it holds that keyframe (or, lagging, will
        ///   soon), else from its newest keyframe: parents a keyframe apart would leave the
        ///   sender's start group with a stripe missing.
        from_seq: u64,
        /// The subscriber, as in `Hello`: a walk subscribes to nodes that never had its
        /// hello, and a parent needs its address to pass it on (a leaf it displaces is
        /// redirected to it) and its upload to place it.
        info: PeerInfo,
    },
    /// The receiver is now a child of the sender in `stripe`. `sends_from`: the first of
    /// the stripe's chunks the sender sends it (where its fast-join group or resume
    /// starts; 0 when it holds nothing yet): chunks of the stripe below it come only from
    /// pulls, so a newcomer whose parents started their groups at different keyframes
    /// pulls the difference at once instead of waiting for them.
    Accept { stripe: u8, sends_from: u64 },
    /// The sender has no room in `stripe`: try these instead (its children with room,
    /// best first; bounded by `MAX_PEERS_PER_MESSAGE`). `keyframe`: the newest keyframe
    /// the sender holds (0: none), where a newcomer that holds none yet asks its parents
    /// to start: a candidate further down the tree may not hold it yet, and would
    /// otherwise send the group before it, a keyframe interval of stream the newcomer
    /// has no use for, through the uplink its own start waits on.
    Redirect { stripe: u8, keyframe: u64, candidates: Vec<PeerInfo> },
    /// The sender is no longer the receiver's child (or parent) in `stripe`.
    Unsubscribe { stripe: u8 },
    /// Mesh availability summary.
    Have(Have),
    /// Mesh pull: send me these chunks (bounded by `MAX_REQUEST`).
    Request { seqs: Vec<u64> },
    /// A chunk, with the number of overlay hops it has taken so far (not signed: it is a
    /// measurement, and a liar only misleads its own subtree's statistics).
    Chunk { hops: u8, chunk: Chunk },
    /// The sender is leaving the swarm.
    Leave,
    /// Parent to child: my own parent in `stripe` is `parent`. If the sender dies, its
    /// children ask that node first: it sits just above them, and is not in their subtree.
    Upstream { stripe: u8, parent: PeerInfo },
    /// Answer to a `Request`: the sender will not send these (its pull budget for now is
    /// spent, or it does not hold them), so the requester asks another holder at once
    /// rather than after its pull timeout. Bounded by `MAX_REQUEST`.
    Declined { seqs: Vec<u64> },
}

/// Peers in one `Peers` or `Redirect` message.
pub const MAX_PEERS_PER_MESSAGE: usize = 16;
/// Sequence numbers in one `Request`.
pub const MAX_REQUEST: usize = 32;
/// Chunks an availability summary covers.
pub const HAVE_WINDOW: u64 = 64;
/// Largest chunk payload a node sends or accepts, bytes. A chunk is about 0.1 s of stream;
/// at 40 Mbit/s, the most rill is meant to carry, that is 500 kB, so 1 MiB leaves room for
/// a keyframe-heavy chunk. The bound also caps what one message can make a receiver
/// buffer.
pub const MAX_CHUNK_PAYLOAD: usize = 1 << 20;

const TYPE_HELLO: u8 = 0x01;
const TYPE_PEERS: u8 = 0x02;
const TYPE_SUBSCRIBE: u8 = 0x03;
const TYPE_ACCEPT: u8 = 0x04;
const TYPE_REDIRECT: u8 = 0x05;
const TYPE_UNSUBSCRIBE: u8 = 0x06;
const TYPE_HAVE: u8 = 0x07;
const TYPE_REQUEST: u8 = 0x08;
const TYPE_CHUNK: u8 = 0x09;
const TYPE_LEAVE: u8 = 0x0a;
const TYPE_UPSTREAM: u8 = 0x0b;
const TYPE_DECLINED: u8 = 0x0c;

/// Address family bytes of a peer's address (the IP version numbers).
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Bytes of a peer's node id (an X25519 public key).
const NODE_ID_LEN: usize = 32;

/// Why bytes are not a valid message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message truncated")]
    Truncated,
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("{count} peers in one message, at most {max} allowed")]
    TooManyPeers { count: u64, max: usize },
    #[error("{count} sequence numbers in one request, at most {max} allowed")]
    TooManySeqs { count: u64, max: usize },
    #[error("unknown address family {0} (expected 4 or 6)")]
    AddrFamily(u8),
    #[error("upload capacity {0} kbit/s does not fit in 32 bits")]
    UploadKbps(u64),
    #[error("relay flag must be 0 or 1, got {0}")]
    RelayFlag(u8),
    #[error("subscribe's starting flag must be 0 or 1, got {0}")]
    StartingFlag(u8),
    /// The chunk's own fields are invalid: payload too large, stripe ≥ stripes, unknown
    /// flags. (A truncated chunk is reported as `Truncated`.)
    #[error("invalid chunk: {0}")]
    Chunk(ChunkError),
}

impl From<ChunkError> for MessageError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Truncated => MessageError::Truncated,
            other => MessageError::Chunk(other),
        }
    }
}

impl Message {
    /// Bytes `encode` appends. Exact, allocation-free, and O(1) except for the lists
    /// (which are bounded).
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Message::Hello { info } => peer_len(info),
            Message::Peers { peers } => peers_len(peers),
            Message::Subscribe { from_seq, info, .. } => 2 + varint_len(*from_seq) + peer_len(info),
            Message::Accept { sends_from, .. } => 1 + varint_len(*sends_from),
            Message::Unsubscribe { .. } => 1,
            Message::Redirect { keyframe, candidates, .. } => {
                1 + varint_len(*keyframe) + peers_len(candidates)
            }
            Message::Have(have) => varint_len(have.latest) + 12,
            Message::Request { seqs } | Message::Declined { seqs } => seqs_len(seqs),
            Message::Chunk { chunk, .. } => 1 + chunk.encoded_len(),
            Message::Leave => 0,
            Message::Upstream { parent, .. } => 1 + peer_len(parent),
        }
    }

    /// Appends the encoding (see the module docs) to `out`.
    ///
    /// Encoding never fails. What the receiver would refuse is still written faithfully, so
    /// the refusal names the problem: lists longer than their bound, a payload larger than
    /// [`MAX_CHUNK_PAYLOAD`]. Integers sent as varints that exceed 2^62 - 1 (sequence
    /// numbers, which no chunk reaches in practice) are sent as 2^62 - 1.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            Message::Hello { info } => {
                out.push(TYPE_HELLO);
                put_peer(out, info);
            }
            Message::Peers { peers } => {
                out.push(TYPE_PEERS);
                put_peers(out, peers);
            }
            Message::Subscribe { stripe, starting, from_seq, info } => {
                out.extend_from_slice(&[TYPE_SUBSCRIBE, *stripe, u8::from(*starting)]);
                put_varint(out, *from_seq);
                put_peer(out, info);
            }
            Message::Accept { stripe, sends_from } => {
                out.extend_from_slice(&[TYPE_ACCEPT, *stripe]);
                put_varint(out, *sends_from);
            }
            Message::Redirect { stripe, keyframe, candidates } => {
                out.extend_from_slice(&[TYPE_REDIRECT, *stripe]);
                put_varint(out, *keyframe);
                put_peers(out, candidates);
            }
            Message::Unsubscribe { stripe } => out.extend_from_slice(&[TYPE_UNSUBSCRIBE, *stripe]),
            Message::Have(have) => {
                out.push(TYPE_HAVE);
                put_varint(out, have.latest);
                out.extend_from_slice(&have.recent.to_be_bytes());
                out.extend_from_slice(&[have.spare_home, have.spare_lend, have.home_depth, have.home_leaves]);
            }
            Message::Request { seqs } => {
                out.push(TYPE_REQUEST);
                put_seqs(out, seqs);
            }
            Message::Declined { seqs } => {
                out.push(TYPE_DECLINED);
                put_seqs(out, seqs);
            }
            Message::Chunk { hops, chunk } => {
                out.extend_from_slice(&[TYPE_CHUNK, *hops]);
                chunk.encode(out);
            }
            Message::Leave => out.push(TYPE_LEAVE),
            Message::Upstream { stripe, parent } => {
                out.extend_from_slice(&[TYPE_UPSTREAM, *stripe]);
                put_peer(out, parent);
            }
        }
    }

    /// Decodes one whole message. A chunk's payload is copied out of `bytes`; use
    /// [`Message::decode_bytes`] to share the buffer instead.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        decode_with(bytes, Bytes::copy_from_slice)
    }

    /// Decodes one whole message; a chunk's payload is a slice of `bytes` (no copy).
    pub fn decode_bytes(bytes: Bytes) -> Result<Message, MessageError> {
        decode_with(&bytes, |payload| bytes.slice_ref(payload))
    }
}

/// The decoder behind both entry points; `payload` makes the chunk payload's `Bytes` from
/// its slice of `buf`.
fn decode_with<'a>(buf: &'a [u8], payload: impl FnOnce(&'a [u8]) -> Bytes) -> Result<Message, MessageError> {
    let mut r = Reader::new(buf);
    let message = match read_u8(&mut r)? {
        TYPE_HELLO => Message::Hello { info: read_peer(&mut r)? },
        TYPE_PEERS => Message::Peers { peers: read_peers(&mut r)? },
        TYPE_SUBSCRIBE => {
            let stripe = read_u8(&mut r)?;
            let starting = match read_u8(&mut r)? {
                0 => false,
                1 => true,
                other => return Err(MessageError::StartingFlag(other)),
            };
            Message::Subscribe { stripe, starting, from_seq: read_varint(&mut r)?, info: read_peer(&mut r)? }
        }
        TYPE_ACCEPT => Message::Accept { stripe: read_u8(&mut r)?, sends_from: read_varint(&mut r)? },
        TYPE_REDIRECT => {
            let stripe = read_u8(&mut r)?;
            let keyframe = read_varint(&mut r)?;
            Message::Redirect { stripe, keyframe, candidates: read_peers(&mut r)? }
        }
        TYPE_UNSUBSCRIBE => Message::Unsubscribe { stripe: read_u8(&mut r)? },
        TYPE_HAVE => {
            let latest = read_varint(&mut r)?;
            let recent = u64::from_be_bytes(read_array(&mut r)?);
            let (spare_home, spare_lend) = (read_u8(&mut r)?, read_u8(&mut r)?);
            let (home_depth, home_leaves) = (read_u8(&mut r)?, read_u8(&mut r)?);
            Message::Have(Have { latest, recent, spare_home, spare_lend, home_depth, home_leaves })
        }
        TYPE_REQUEST => Message::Request { seqs: read_seqs(&mut r)? },
        TYPE_DECLINED => Message::Declined { seqs: read_seqs(&mut r)? },
        TYPE_CHUNK => {
            let hops = read_u8(&mut r)?;
            Message::Chunk { hops, chunk: Chunk::read(&mut r, payload)? }
        }
        TYPE_LEAVE => Message::Leave,
        TYPE_UPSTREAM => {
            let stripe = read_u8(&mut r)?;
            Message::Upstream { stripe, parent: read_peer(&mut r)? }
        }
        other => return Err(MessageError::UnknownType(other)),
    };
    match r.rest().len() {
        0 => Ok(message),
        n => Err(MessageError::TrailingBytes(n)),
    }
}

fn seqs_len(seqs: &[u64]) -> usize {
    varint_len(seqs.len() as u64) + seqs.iter().map(|&s| varint_len(s)).sum::<usize>()
}

fn put_seqs(out: &mut Vec<u8>, seqs: &[u64]) {
    put_varint(out, seqs.len() as u64);
    for &seq in seqs {
        put_varint(out, seq);
    }
}

fn read_seqs(r: &mut Reader<'_>) -> Result<Vec<u64>, MessageError> {
    let count = read_varint(r)?;
    if count > MAX_REQUEST as u64 {
        return Err(MessageError::TooManySeqs { count, max: MAX_REQUEST });
    }
    (0..count).map(|_| read_varint(r)).collect()
}

fn peer_len(peer: &PeerInfo) -> usize {
    let ip = match peer.addr {
        SocketAddr::V4(_) => 4,
        SocketAddr::V6(_) => 16,
    };
    NODE_ID_LEN + 1 + ip + 2 + varint_len(u64::from(peer.upload_kbps)) + 1
}

fn peers_len(peers: &[PeerInfo]) -> usize {
    varint_len(peers.len() as u64) + peers.iter().map(peer_len).sum::<usize>()
}

/// Appends a QUIC varint, saturated at its largest value (see `Message::encode`).
fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 8];
    let mut w = Writer::new(&mut buf, 0);
    w.varint(v.min(VARINT_MAX));
    let len = w.pos();
    out.extend_from_slice(&buf[..len]);
}

fn put_peer(out: &mut Vec<u8>, peer: &PeerInfo) {
    out.extend_from_slice(peer.id.as_bytes());
    match peer.addr.ip() {
        IpAddr::V4(ip) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&peer.addr.port().to_be_bytes());
    put_varint(out, u64::from(peer.upload_kbps));
    out.push(u8::from(peer.relay));
}

fn put_peers(out: &mut Vec<u8>, peers: &[PeerInfo]) {
    put_varint(out, peers.len() as u64);
    for peer in peers {
        put_peer(out, peer);
    }
}

fn read_u8(r: &mut Reader<'_>) -> Result<u8, MessageError> {
    r.u8().map_err(|_| MessageError::Truncated)
}

fn read_varint(r: &mut Reader<'_>) -> Result<u64, MessageError> {
    r.varint().map_err(|_| MessageError::Truncated)
}

fn read_array<const N: usize>(r: &mut Reader<'_>) -> Result<[u8; N], MessageError> {
    let bytes = r.bytes(N as u64).map_err(|_| MessageError::Truncated)?;
    bytes.try_into().map_err(|_| MessageError::Truncated)
}

fn read_peer(r: &mut Reader<'_>) -> Result<PeerInfo, MessageError> {
    let id = NodeId(read_array(r)?);
    let ip = match read_u8(r)? {
        FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(read_array::<4>(r)?)),
        FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(read_array::<16>(r)?)),
        other => return Err(MessageError::AddrFamily(other)),
    };
    let port = u16::from_be_bytes(read_array(r)?);
    let kbps = read_varint(r)?;
    let upload_kbps = u32::try_from(kbps).map_err(|_| MessageError::UploadKbps(kbps))?;
    let relay = match read_u8(r)? {
        0 => false,
        1 => true,
        other => return Err(MessageError::RelayFlag(other)),
    };
    Ok(PeerInfo { id, addr: SocketAddr::new(ip, port), upload_kbps, relay })
}

fn read_peers(r: &mut Reader<'_>) -> Result<Vec<PeerInfo>, MessageError> {
    let count = read_varint(r)?;
    if count > MAX_PEERS_PER_MESSAGE as u64 {
        return Err(MessageError::TooManyPeers { count, max: MAX_PEERS_PER_MESSAGE });
    }
    (0..count).map(|_| read_peer(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> PeerInfo {
        PeerInfo {
            id: NodeId([n; 32]),
            addr: SocketAddr::from(([10, 0, 0, n], 4000 + u16::from(n))),
            upload_kbps: 20_000,
            relay: n % 2 == 0,
        }
    }

    fn chunk(len: usize) -> Chunk {
        Chunk {
            seq: 41,
            ingest_us: 4_100_000,
            keyframe: true,
            stripe: 1,
            stripes: 4,
            payload: Bytes::from(vec![0x5a; len]),
            signature: [7; 64],
        }
    }

    fn encode(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        message.encode(&mut out);
        out
    }

    /// One message of every variant.
    fn examples() -> Vec<Message> {
        vec![
            Message::Hello { info: peer(1) },
            Message::Peers { peers: (0..MAX_PEERS_PER_MESSAGE as u8).map(peer).collect() },
            Message::Peers { peers: vec![] },
            Message::Subscribe { stripe: 3, starting: true, from_seq: 0, info: peer(2) },
            Message::Subscribe { stripe: 1, starting: false, from_seq: 1_000_000, info: peer(3) },
            Message::Accept { stripe: 0, sends_from: 0 },
            Message::Accept { stripe: 3, sends_from: 1_000_000 },
            Message::Redirect { stripe: 2, keyframe: 0, candidates: vec![peer(4), peer(5)] },
            Message::Redirect { stripe: 1, keyframe: 1_000_000, candidates: vec![] },
            Message::Unsubscribe { stripe: 255 },
            Message::Have(Have {
                latest: 1_000_000,
                recent: u64::MAX,
                spare_home: 3,
                spare_lend: 0,
                home_depth: 0,
                home_leaves: 0,
            }),
            Message::Request { seqs: (0..MAX_REQUEST as u64).map(|i| i << 20).collect() },
            Message::Chunk { hops: 3, chunk: chunk(100) },
            Message::Leave,
            Message::Upstream { stripe: 2, parent: peer(6) },
            Message::Declined { seqs: vec![] },
            Message::Declined { seqs: (0..MAX_REQUEST as u64).map(|i| i << 30).collect() },
        ]
    }

    #[test]
    fn examples_round_trip() {
        for message in examples() {
            let wire = encode(&message);
            assert_eq!(wire.len(), message.encoded_len(), "{message:?}");
            assert_eq!(Message::decode(&wire).unwrap(), message);
            assert_eq!(Message::decode_bytes(Bytes::from(wire)).unwrap(), message);
        }
    }

    #[test]
    fn wire_layout() {
        let v6 = PeerInfo {
            id: NodeId([0xab; 32]),
            addr: "[2001:db8::1]:443".parse().unwrap(),
            upload_kbps: 100,
            relay: true,
        };
        let mut expected = vec![TYPE_HELLO];
        expected.extend_from_slice(&[0xab; 32]);
        expected.push(6);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Port 443 BE, then 100 as a 2-byte varint (0x40 | 0, 100), then relay.
        expected.extend_from_slice(&[0x01, 0xbb, 0x40, 100, 1]);
        assert_eq!(encode(&Message::Hello { info: v6 }), expected);

        let have = Message::Have(Have {
            latest: 63,
            recent: 0x8000_0000_0000_0001,
            spare_home: 2,
            spare_lend: 5,
            home_depth: 7,
            home_leaves: 3,
        });
        assert_eq!(encode(&have), [TYPE_HAVE, 63, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 5, 7, 3]);
        let request = Message::Request { seqs: vec![1, 64, 1 << 30] };
        assert_eq!(encode(&request), [TYPE_REQUEST, 3, 1, 0x40, 64, 0xc0, 0, 0, 0, 0x40, 0, 0, 0]);
        assert_eq!(encode(&Message::Leave), [TYPE_LEAVE]);
        let mut expected = vec![TYPE_SUBSCRIBE, 9, 1, 0];
        expected.extend_from_slice(&encode(&Message::Hello { info: v6 })[1..]);
        assert_eq!(
            encode(&Message::Subscribe { stripe: 9, starting: true, from_seq: 0, info: v6 }),
            expected
        );

        let c = chunk(2);
        let mut expected = vec![TYPE_CHUNK, 5];
        c.encode(&mut expected);
        assert_eq!(encode(&Message::Chunk { hops: 5, chunk: c }), expected);
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![1, 2, 3];
        Message::Accept { stripe: 7, sends_from: 5 }.encode(&mut out);
        assert_eq!(out, [1, 2, 3, TYPE_ACCEPT, 7, 5]);
    }

    #[test]
    fn oversized_varints_saturate() {
        let message = Message::Request { seqs: vec![u64::MAX] };
        let wire = encode(&message);
        assert_eq!(wire.len(), message.encoded_len());
        assert_eq!(Message::decode(&wire).unwrap(), Message::Request { seqs: vec![VARINT_MAX] });
    }

    #[test]
    fn decode_bytes_shares_the_payload() {
        let wire = Bytes::from(encode(&Message::Chunk { hops: 0, chunk: chunk(1000) }));
        let Message::Chunk { chunk: decoded, .. } = Message::decode_bytes(wire.clone()).unwrap() else {
            panic!("not a chunk");
        };
        let start = wire.as_ptr() as usize;
        let p = decoded.payload.as_ptr() as usize;
        assert!(p > start && p + decoded.payload.len() <= start + wire.len(), "payload was copied");
    }

    #[test]
    fn every_strict_prefix_is_truncated() {
        for message in examples() {
            let wire = encode(&message);
            for cut in 0..wire.len() {
                assert_eq!(
                    Message::decode(&wire[..cut]),
                    Err(MessageError::Truncated),
                    "{message:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn bound_violations() {
        let decode = |wire: &[u8]| Message::decode(wire);

        // Lists one over their bounds. The count is checked before any element is read.
        let mut peers =
            encode(&Message::Peers { peers: (0..MAX_PEERS_PER_MESSAGE as u8).map(peer).collect() });
        peers[1] = MAX_PEERS_PER_MESSAGE as u8 + 1;
        assert_eq!(decode(&peers), Err(MessageError::TooManyPeers { count: 17, max: MAX_PEERS_PER_MESSAGE }));
        let huge = [TYPE_REDIRECT, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&huge),
            Err(MessageError::TooManyPeers { count: VARINT_MAX, max: MAX_PEERS_PER_MESSAGE })
        );
        for message in [
            Message::Request { seqs: vec![0; MAX_REQUEST + 1] },
            Message::Declined { seqs: vec![0; MAX_REQUEST + 1] },
        ] {
            assert_eq!(
                decode(&encode(&message)),
                Err(MessageError::TooManySeqs { count: MAX_REQUEST as u64 + 1, max: MAX_REQUEST })
            );
        }

        // A payload one byte over the limit, complete or merely claimed.
        let big = encode(&Message::Chunk { hops: 0, chunk: chunk(MAX_CHUNK_PAYLOAD + 1) });
        let too_large = Err(MessageError::Chunk(ChunkError::PayloadTooLarge {
            len: MAX_CHUNK_PAYLOAD + 1,
            max: MAX_CHUNK_PAYLOAD,
        }));
        assert_eq!(decode(&big), too_large);
        assert_eq!(decode(&big[..40]), too_large);
        let max = encode(&Message::Chunk { hops: 0, chunk: chunk(MAX_CHUNK_PAYLOAD) });
        assert!(decode(&max).is_ok());

        // Chunk header: offsets after type and hops.
        let good = encode(&Message::Chunk { hops: 0, chunk: chunk(10) });
        let (flags, stripe, stripes) = (2 + 16, 2 + 17, 2 + 18);
        let mut bad = good.clone();
        bad[stripe] = 4;
        assert_eq!(decode(&bad), Err(MessageError::Chunk(ChunkError::Stripe { stripe: 4, stripes: 4 })));
        let mut bad = good.clone();
        bad[stripe] = 0;
        bad[stripes] = 0;
        assert_eq!(decode(&bad), Err(MessageError::Chunk(ChunkError::Stripe { stripe: 0, stripes: 0 })));
        let mut bad = good.clone();
        bad[flags] = 0x80;
        assert_eq!(decode(&bad), Err(MessageError::Chunk(ChunkError::Flags(0x80))));

        // Trailing bytes after every kind of message.
        for message in examples() {
            let mut wire = encode(&message);
            wire.push(0);
            assert_eq!(decode(&wire), Err(MessageError::TrailingBytes(1)), "{message:?}");
        }

        // Unknown types, including 0 (so a zeroed buffer is not a message).
        for t in [0x00, 0x0d, 0x7f, 0xff] {
            assert_eq!(decode(&[t]), Err(MessageError::UnknownType(t)));
        }
        assert_eq!(decode(&[]), Err(MessageError::Truncated));

        // Peer fields: offsets after the type byte and the 32-byte id.
        let hello = encode(&Message::Hello { info: peer(1) });
        let family = 1 + 32;
        for f in [0, 5, 41] {
            let mut bad = hello.clone();
            bad[family] = f;
            assert_eq!(decode(&bad), Err(MessageError::AddrFamily(f)));
        }
        let mut bad = hello.clone();
        *bad.last_mut().unwrap() = 2;
        assert_eq!(decode(&bad), Err(MessageError::RelayFlag(2)));
        let kbps = family + 1 + 4 + 2;
        let mut bad = hello[..kbps].to_vec();
        bad.extend_from_slice(&[0xc0, 0, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&bad), Err(MessageError::UploadKbps(1 << 32)));

        let subscribe =
            encode(&Message::Subscribe { stripe: 0, starting: true, from_seq: 40, info: peer(1) });
        let mut bad = subscribe.clone();
        bad[2] = 2;
        assert_eq!(decode(&bad), Err(MessageError::StartingFlag(2)));
    }

    fn arb_peer() -> impl Strategy<Value = PeerInfo> {
        let addr = prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ];
        (any::<[u8; 32]>(), addr, any::<u32>(), any::<bool>())
            .prop_map(|(id, addr, upload_kbps, relay)| PeerInfo { id: NodeId(id), addr, upload_kbps, relay })
    }

    fn arb_chunk() -> impl Strategy<Value = Chunk> {
        let stripes = (1u8..=255).prop_flat_map(|stripes| (Just(stripes), 0..stripes));
        let signature = prop::collection::vec(any::<u8>(), 64).prop_map(|v| {
            let mut s = [0u8; 64];
            s.copy_from_slice(&v);
            s
        });
        (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            stripes,
            prop::collection::vec(any::<u8>(), 0..300),
            signature,
        )
            .prop_map(|(seq, ingest_us, keyframe, (stripes, stripe), payload, signature)| Chunk {
                seq,
                ingest_us,
                keyframe,
                stripe,
                stripes,
                payload: Bytes::from(payload),
                signature,
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let peers = || prop::collection::vec(arb_peer(), 0..=MAX_PEERS_PER_MESSAGE);
        let seq = 0..=VARINT_MAX;
        prop_oneof![
            arb_peer().prop_map(|info| Message::Hello { info }),
            peers().prop_map(|peers| Message::Peers { peers }),
            (any::<u8>(), any::<bool>(), seq.clone(), arb_peer()).prop_map(
                |(stripe, starting, from_seq, info)| Message::Subscribe { stripe, starting, from_seq, info }
            ),
            (any::<u8>(), seq.clone())
                .prop_map(|(stripe, sends_from)| Message::Accept { stripe, sends_from }),
            (any::<u8>(), seq.clone(), peers()).prop_map(|(stripe, keyframe, candidates)| {
                Message::Redirect { stripe, keyframe, candidates }
            }),
            any::<u8>().prop_map(|stripe| Message::Unsubscribe { stripe }),
            (seq.clone(), any::<u64>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(
                |(latest, recent, spare_home, spare_lend, home_depth, home_leaves)| {
                    Message::Have(Have { latest, recent, spare_home, spare_lend, home_depth, home_leaves })
                }
            ),
            prop::collection::vec(seq.clone(), 0..=MAX_REQUEST).prop_map(|seqs| Message::Request { seqs }),
            prop::collection::vec(seq, 0..=MAX_REQUEST).prop_map(|seqs| Message::Declined { seqs }),
            (any::<u8>(), arb_chunk()).prop_map(|(hops, chunk)| Message::Chunk { hops, chunk }),
            Just(Message::Leave),
            (any::<u8>(), arb_peer()).prop_map(|(stripe, parent)| Message::Upstream { stripe, parent }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn messages_round_trip(message in arb_message(), prefix in prop::collection::vec(any::<u8>(), 0..4)) {
            let mut out = prefix.clone();
            message.encode(&mut out);
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            let wire = &out[prefix.len()..];
            prop_assert_eq!(wire.len(), message.encoded_len());
            prop_assert_eq!(Message::decode(wire).unwrap(), message.clone());
            prop_assert_eq!(Message::decode_bytes(Bytes::copy_from_slice(wire)).unwrap(), message);
        }

        #[test]
        fn truncated_messages_are_errors(message in arb_message(), cut in any::<prop::sample::Index>()) {
            let wire = encode(&message);
            let cut = cut.index(wire.len());
            prop_assert_eq!(Message::decode(&wire[..cut]), Err(MessageError::Truncated));
            prop_assert_eq!(
                Message::decode_bytes(Bytes::copy_from_slice(&wire[..cut])),
                Err(MessageError::Truncated)
            );
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Message::decode(&bytes);
            let _ = Message::decode_bytes(Bytes::from(bytes));
        }

        #[test]
        fn garbage_after_a_valid_type_never_panics(
            t in TYPE_HELLO..=TYPE_LEAVE,
            rest in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut bytes = vec![t];
            bytes.extend_from_slice(&rest);
            let _ = Message::decode(&bytes);
            let _ = Message::decode_bytes(Bytes::from(bytes));
        }

        #[test]
        fn corrupted_messages_never_panic(
            message in arb_message(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut wire = encode(&message);
            for (at, byte) in edits {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
            let _ = Message::decode(&wire);
            let _ = Message::decode_bytes(Bytes::from(wire));
        }
    }
}
