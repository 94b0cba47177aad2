//! Channel links: the one line a user pastes to watch or relay a channel.
//!
//! ```text
//! rill:CHANNEL?peer=NODE@HOST:PORT[&peer=...][&stripes=K][&kbps=RATE][&psk=SECRET]
//! ```
//! - `CHANNEL`: the channel id (the publisher's Ed25519 public key, 52 base32 characters).
//! - `peer`: a bootstrap node (the publisher, a relay) by node id and UDP address; IPv6
//!   addresses in brackets (`[::1]:4000`). At least one, at most [`MAX_LINK_PEERS`]. Knowing
//!   the node id lets the first handshake be Noise IK: only that node can answer.
//! - `stripes`: the channel's stripe count (default [`DEFAULT_STRIPES`]); every node must
//!   subscribe to each stripe before the first chunk tells it the count.
//! - `kbps`: the stream's nominal bitrate, which sizes how many children a node feeds.
//! - `psk`: a private channel's secret (52 base32 characters): the transport's Noise psk,
//!   so a node without it cannot complete a handshake with any member of the channel.
//!
//! Parsing is strict: every way a link can be wrong has its own error, and unknown
//! parameters are refused rather than ignored (a typo in `psk` must not silently make a
//! private link public).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use rill_swarm::chunk::ChannelId;
use rill_swarm::NodeId;
use rill_transport::crypto::handshake::PSK_LEN;

/// URI scheme of a channel link.
pub const SCHEME: &str = "rill:";
/// Bootstrap peers a link may name (the swarm keeps at most `MAX_ROOTS` = 32 of them).
pub const MAX_LINK_PEERS: usize = rill_swarm::node::MAX_ROOTS;
/// Stripes when the link does not say (SplitStream uses 16 for large fan-outs; 4 keeps a
/// departure's cost at a quarter of the stream while each stripe still carries several
/// chunks per keyframe interval at 25 ms chunks).
pub const DEFAULT_STRIPES: u8 = 4;
/// Most stripes a channel may have (a chunk's stripe field is one byte; more than 64 trees
/// would make each one too thin to be worth its state).
pub const MAX_STRIPES: u8 = 64;
/// Nominal bitrate when the link does not say, kbit/s.
pub const DEFAULT_KBPS: u32 = 4000;
/// Longest link we parse: 32 peers of ~110 characters each, plus the rest.
pub const MAX_LINK_LEN: usize = 8192;

#[derive(Clone, PartialEq, Eq)]
pub struct ChannelLink {
    pub channel: ChannelId,
    pub peers: Vec<(NodeId, SocketAddr)>,
    pub stripes: u8,
    pub kbps: u32,
    /// A private channel's pre-shared key.
    pub psk: Option<[u8; PSK_LEN]>,
}

impl fmt::Debug for ChannelLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelLink")
            .field("channel", &format_args!("{}", self.channel))
            .field("peers", &self.peers)
            .field("stripes", &self.stripes)
            .field("kbps", &self.kbps)
            .field("private", &self.psk.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("a channel link starts with `rill:`")]
    Scheme,
    #[error("the link is {0} characters long; a channel link is at most {MAX_LINK_LEN}")]
    TooLong(usize),
    #[error("the link holds whitespace or control characters (was it cut or wrapped when pasted?)")]
    Whitespace,
    #[error("bad channel id in link: {0}")]
    Channel(String),
    #[error("the link names no peer to join through (it needs at least one `peer=NODE@HOST:PORT`)")]
    NoPeers,
    #[error("the link names {0} peers; at most {MAX_LINK_PEERS} are allowed")]
    TooManyPeers(usize),
    #[error("bad peer `{text}` in link: {reason}")]
    Peer { text: String, reason: String },
    #[error("parameter `{0}` appears twice in the link")]
    Duplicate(&'static str),
    #[error("bad `stripes` in link: `{0}` (expected 1 to {MAX_STRIPES})")]
    Stripes(String),
    #[error("bad `kbps` in link: `{0}` (expected a bitrate in kbit/s, 1 to 1000000)")]
    Kbps(String),
    #[error("bad `psk` in link: {0}")]
    Psk(String),
    #[error("unknown parameter `{0}` in link (known: peer, stripes, kbps, psk)")]
    UnknownParameter(String),
    #[error("parameter without a value in link: `{0}`")]
    NoValue(String),
}

impl FromStr for ChannelLink {
    type Err = LinkError;

    fn from_str(text: &str) -> Result<Self, LinkError> {
        if text.len() > MAX_LINK_LEN {
            return Err(LinkError::TooLong(text.len()));
        }
        let rest = text.strip_prefix(SCHEME).ok_or(LinkError::Scheme)?;
        // Tolerate `rill://CHANNEL` too, which users may type by analogy with URLs.
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(LinkError::Whitespace);
        }
        let (channel, query) = rest.split_once('?').unwrap_or((rest, ""));
        let channel: ChannelId = channel.parse().map_err(|e| LinkError::Channel(format!("{e}")))?;
        let mut link = ChannelLink {
            channel,
            peers: Vec::new(),
            stripes: DEFAULT_STRIPES,
            kbps: DEFAULT_KBPS,
            psk: None,
        };
        let (mut seen_stripes, mut seen_kbps) = (false, false);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(LinkError::NoValue(pair.to_string()));
            };
            if value.is_empty() {
                return Err(LinkError::NoValue(pair.to_string()));
            }
            match key {
                "peer" => {
                    if link.peers.len() >= MAX_LINK_PEERS {
                        let count = query.split('&').filter(|p| p.starts_with("peer=")).count();
                        return Err(LinkError::TooManyPeers(count));
                    }
                    let peer = parse_peer(value)?;
                    if !link.peers.contains(&peer) {
                        link.peers.push(peer);
                    }
                }
                "stripes" => {
                    if std::mem::replace(&mut seen_stripes, true) {
                        return Err(LinkError::Duplicate("stripes"));
                    }
                    link.stripes = value
                        .parse::<u8>()
                        .ok()
                        .filter(|k| (1..=MAX_STRIPES).contains(k))
                        .ok_or_else(|| LinkError::Stripes(value.to_string()))?;
                }
                "kbps" => {
                    if std::mem::replace(&mut seen_kbps, true) {
                        return Err(LinkError::Duplicate("kbps"));
                    }
                    link.kbps = value
                        .parse::<u32>()
                        .ok()
                        .filter(|k| (1..=1_000_000).contains(k))
                        .ok_or_else(|| LinkError::Kbps(value.to_string()))?;
                }
                "psk" => {
                    if link.psk.is_some() {
                        return Err(LinkError::Duplicate("psk"));
                    }
                    // The psk has the text form of a node id: 32 bytes in strict base32.
                    let id: NodeId = value
                        .parse()
                        .map_err(|e| LinkError::Psk(format!("{e}").replace("node id", "psk")))?;
                    link.psk = Some(id.0);
                }
                other => return Err(LinkError::UnknownParameter(other.to_string())),
            }
        }
        if link.peers.is_empty() {
            return Err(LinkError::NoPeers);
        }
        Ok(link)
    }
}

fn parse_peer(text: &str) -> Result<(NodeId, SocketAddr), LinkError> {
    let bad = |reason: String| LinkError::Peer { text: text.to_string(), reason };
    let (id, addr) = text.split_once('@').ok_or_else(|| bad("expected NODE@HOST:PORT".into()))?;
    let id: NodeId = id.parse().map_err(|e| bad(format!("{e}")))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| bad(format!("`{addr}` is not an IP address and port (IPv6 in brackets: [::1]:4000)")))?;
    if addr.port() == 0 {
        return Err(bad("port 0 cannot be reached".into()));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(bad(format!("{} is not an address a node can be reached at", addr.ip())));
    }
    Ok((id, addr))
}

impl fmt::Display for ChannelLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.channel)?;
        let mut sep = '?';
        for (id, addr) in &self.peers {
            write!(f, "{sep}peer={id}@{addr}")?;
            sep = '&';
        }
        if self.stripes != DEFAULT_STRIPES {
            write!(f, "{sep}stripes={}", self.stripes)?;
            sep = '&';
        }
        if self.kbps != DEFAULT_KBPS {
            write!(f, "{sep}kbps={}", self.kbps)?;
            sep = '&';
        }
        if let Some(psk) = &self.psk {
            write!(f, "{sep}psk={}", NodeId(*psk))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn sample() -> ChannelLink {
        ChannelLink {
            channel: ChannelId([7; 32]),
            peers: vec![(id(1), "127.0.0.1:4000".parse().unwrap()), (id(2), "[::1]:4001".parse().unwrap())],
            stripes: 8,
            kbps: 2500,
            psk: Some([9; 32]),
        }
    }

    #[test]
    fn a_link_round_trips_through_its_text() {
        for link in
            [sample(), ChannelLink { stripes: DEFAULT_STRIPES, kbps: DEFAULT_KBPS, psk: None, ..sample() }]
        {
            let text = link.to_string();
            assert!(text.starts_with("rill:"));
            assert_eq!(text.parse::<ChannelLink>(), Ok(link), "{text}");
        }
    }

    #[test]
    fn each_way_a_link_can_be_wrong_has_its_own_error() {
        let good = sample().to_string();
        let channel = ChannelId([7; 32]).to_string();
        let peer = format!("peer={}@127.0.0.1:4000", id(1));
        type Expect = fn(&LinkError) -> bool;
        let cases: Vec<(String, Expect)> = vec![
            ("http://example.com".into(), |e| matches!(e, LinkError::Scheme)),
            (good.replacen("rill:", "rill:x", 1), |e| matches!(e, LinkError::Channel(_))),
            (format!("rill:{channel}"), |e| matches!(e, LinkError::NoPeers)),
            (format!("rill:{channel}?stripes=4"), |e| matches!(e, LinkError::NoPeers)),
            (format!("rill:{channel}?peer=abc@127.0.0.1:1"), |e| matches!(e, LinkError::Peer { .. })),
            (format!("rill:{channel}?peer={}", id(1)), |e| matches!(e, LinkError::Peer { .. })),
            (format!("rill:{channel}?peer={}@localhost:4000", id(1)), |e| {
                matches!(e, LinkError::Peer { .. })
            }),
            (format!("rill:{channel}?peer={}@0.0.0.0:4000", id(1)), |e| matches!(e, LinkError::Peer { .. })),
            (format!("rill:{channel}?peer={}@127.0.0.1:0", id(1)), |e| matches!(e, LinkError::Peer { .. })),
            (format!("rill:{channel}?{peer}&stripes=0"), |e| matches!(e, LinkError::Stripes(_))),
            (format!("rill:{channel}?{peer}&stripes=65"), |e| matches!(e, LinkError::Stripes(_))),
            (format!("rill:{channel}?{peer}&stripes=4&stripes=4"), |e| matches!(e, LinkError::Duplicate(_))),
            (format!("rill:{channel}?{peer}&kbps=fast"), |e| matches!(e, LinkError::Kbps(_))),
            (format!("rill:{channel}?{peer}&psk=short"), |e| matches!(e, LinkError::Psk(_))),
            (format!("rill:{channel}?{peer}&pks={}", id(3)), |e| matches!(e, LinkError::UnknownParameter(_))),
            (format!("rill:{channel}?{peer}&psk"), |e| matches!(e, LinkError::NoValue(_))),
            (format!("rill:{channel}?{peer}&kbps="), |e| matches!(e, LinkError::NoValue(_))),
            (format!("rill:{channel}?{peer} &kbps=1"), |e| matches!(e, LinkError::Whitespace)),
            (format!("rill:{channel}?{}", vec![peer.as_str(); 5000].join("&")), |e| {
                matches!(e, LinkError::TooLong(_))
            }),
        ];
        for (text, expected) in cases {
            let err = text.parse::<ChannelLink>().expect_err(&text);
            assert!(expected(&err), "{text}: {err}");
            assert!(!err.to_string().is_empty());
        }
        let many: Vec<String> =
            (0..40u8).map(|i| format!("peer={}@127.0.0.1:{}", id(i), 4000 + u16::from(i))).collect();
        let err = format!("rill:{channel}?{}", many.join("&")).parse::<ChannelLink>().unwrap_err();
        assert_eq!(err, LinkError::TooManyPeers(40));
    }

    #[test]
    fn no_input_panics_the_parser() {
        let good = sample().to_string();
        let bytes = good.as_bytes();
        for i in 0..bytes.len() {
            let _ = good[..i].parse::<ChannelLink>();
            for c in ['?', '&', '=', '@', ':', '[', ']', 'é', '\0'] {
                let mut s = good.clone();
                s.replace_range(i..i + 1, &c.to_string());
                let _ = s.parse::<ChannelLink>();
            }
        }
    }
}
