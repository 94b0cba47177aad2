//! One swarm node (publisher, relay or viewer) as a sans-IO state machine.
//!
//! # How chunks travel
//! - **Stripes and push trees** (SplitStream, Castro et al., SOSP 2003): chunk `seq` belongs
//!   to stripe `seq % K`, and each stripe has its own push tree rooted at the publisher. A
//!   viewer is *interior* (forwards) only in its home stripe (`id % K`) and a leaf in the
//!   others, so a departure costs each child one stripe, not the stream. Relays and the
//!   publisher are interior in every stripe. A node takes as many children as its upload
//!   carries at [`TREE_UPLOAD_SHARE`] of capacity ([`ROOT_TREE_UPLOAD_SHARE`] for roots);
//!   slots it lends to other stripes come out of the same count.
//! - **Joining a tree**: `Subscribe` to a candidate; a parent with room answers
//!   `Accept`, one without answers `Redirect` to a few of its interior children, so a
//!   walk goes down level by level. Nodes with children walk from the roots, so trees
//!   fill from the top. A mesh neighbour that advertises free slots in its `Have` is
//!   asked first, without a walk. A viewer lends slots its home stripe does not use to
//!   leaves of other stripes. A full parent takes a newcomer with much more upload than
//!   its weakest child and redirects that child below the newcomer (mTreebone's
//!   capacity-ordered core, Wang et al., INFOCOM 2007): strong nodes end up near the
//!   root, and trees stay shallow.
//! - **Moving up**: trees grow where slots happened to be free when nodes joined, so a
//!   node settles deeper than it need be. Each node advertises its depth in its home
//!   stripe (hops of its parent's chunks) in its `Have`, once it has held for a while; a
//!   node that sees a mesh neighbour of that stripe higher up with a free slot moves
//!   under it, subtree and all, and a node with children may also take a leaf's place
//!   there (the push-down above). The old parent feeds it until the new one accepts.
//! - **Mesh** (HyParView-like, Leitão et al., DSN 2007): a bounded active view of mesh
//!   neighbours exchanging availability summaries (`Have`), and a bounded passive view fed by
//!   peer exchange. Chunks the tree did not bring in time are pulled from neighbours,
//!   within what each server's upload leaves beside its children's stripes (at least a
//!   fixed share), first from those that advertise free child slots (upload to spare);
//!   what a server will not send it declines at
//!   once (`Message::Declined`), and the chunk is asked of another holder. What
//!   a node got as repair (a pull, a fast-join group, a resume) it passes on to its
//!   children as repair too, behind their live chunks.
//! - **Parent failure**: a parent that sends nothing in its stripe while the stream goes on
//!   (newer chunks arrive, or mesh neighbours advertise them) is dropped, remembered as
//!   silent for a while (not asked again, not pulled from) and replaced, unless its
//!   summaries (parents send them to their children) show it alive and itself waiting for
//!   the stripe: then its own search is given time, so that a departure re-parents the
//!   dead node's children and not its whole subtree. Those children know the dead node's
//!   own parent (`Upstream`) and ask it first, which takes their dead parent's slot for
//!   one of them once it has been quiet a moment, instead of walking down from the roots.
//!   The new parent sends the few chunks of the stripe the child lacks
//!   (`Subscribe::from_seq`), the freshest with its live ones; the rest are pulled
//!   meanwhile, from the publisher or a relay when a newcomer's mesh is too small to have
//!   them. The other way round, children send their parents their summaries,
//!   and a parent drops a child it has not heard from for a second, so a crashed
//!   child's slot goes to an orphan at once rather than after the transport's idle timeout.
//! - **Fast join**: a parent sends a new child a keyframe chunk at once, so a newcomer
//!   can start decoding after one round trip, and then its stripe's chunks of that
//!   keyframe group behind the live ones: its newest keyframe, or, to a newcomer that
//!   already started through other parents, the keyframe it started at
//!   (`Subscribe::from_seq`); to one that holds nothing yet, the newest keyframe the
//!   redirect that sent it there named, from the moment it arrives if the parent lags
//!   behind it (not the older group before); what follows the parent's own newer keyframe,
//!   if it has one, goes with its live chunks, in case the newcomer starts there. A parent
//!   sends a newcomer its group only while the groups it queued already leave its uplink
//!   within [`GROUP_BACKLOG_LIMIT`]; past that, only the keyframe chunk. Its `Accept`
//!   says where the chunks it sends begin, and the newcomer pulls at once what lies
//!   below that (its parents, asked before it held anything, may start at different
//!   keyframes), and pulls any chunk of its start span (what its player waits for:
//!   [`START_SPAN`] from its keyframe and, if that keyframe is old, the group up to just
//!   behind the live edge) still missing a moment after its first chunk, whatever the
//!   stripe's cadence says. A newcomer given mesh contacts waits a moment for their
//!   summaries and takes a free slot they advertise; failing that, a node without
//!   children in a stripe starts its walk at the interior peers it knows, and only then
//!   at the roots, which keeps a crowd of newcomers off the roots' uplinks.
//! - **Roots** are the publisher and relays; other bootstrap peers are mesh contacts.
//! - **Trust**: every chunk is verified before it is kept, forwarded or played; a peer that
//!   sends a forged chunk is banned for good.
//!
//! # Call order
//! As the transport's `Endpoint`: feed `handle_message` / `handle_peer_lost` /
//! `handle_timeout` (when `poll_timeout` is due) and `publish`; then drain `poll_transmit` and
//! `poll_event`. `now` never goes backwards; randomness comes only from the seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rill_transport::Class;

use crate::chunk::{ChannelId, Chunk};
use crate::message::{Have, Message, PeerInfo, HAVE_WINDOW, MAX_PEERS_PER_MESSAGE, MAX_REQUEST};
use crate::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The channel's source: root of every stripe tree.
    Publisher,
    /// Always-on, high-capacity forwarder: interior in every stripe, near the roots.
    Relay,
    /// Watches the channel, forwards in its home stripe.
    Viewer,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Stripes (push trees) the stream is split into.
    pub stripes: u8,
    /// The stream's bitrate, kbit/s (sizes the number of children a node can feed).
    pub stream_kbps: u32,
    /// Upload this node offers, kbit/s.
    pub upload_kbps: u32,
    /// Mesh neighbours to keep.
    pub mesh_size: usize,
    /// Nominal duration of one chunk (the publisher's chunking), for timers.
    pub chunk_duration: Duration,
}

/// Something for the application (or simulator) to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A chunk verified and held for the first time, `hops` overlay hops from the
    /// publisher, received from `from`.
    Chunk { seq: u64, ingest_us: u64, keyframe: bool, hops: u8, from: NodeId },
    /// `from` sent a chunk that failed verification; it was dropped and the peer banned.
    ForgedChunk { from: NodeId },
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The destination. When we only know a peer by the session it reached us on, `addr`
    /// is unspecified (0.0.0.0:0) and the driver uses that session.
    pub to: PeerInfo,
    pub message: Message,
    /// The transport class to send it in.
    pub class: Class,
    /// Abandon the message if it has not left by then (a chunk stuck in a queue behind
    /// others is worth nothing once it is this old: the transport drops it instead).
    pub deadline: Option<Instant>,
}

/// How long a chunk may wait in our upload queue before the transport abandons it.
pub const CHUNK_SEND_DEADLINE: Duration = Duration::from_millis(1000);

/// Counters (names follow shared/METRICS.md where one applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub chunks_received: u64,
    /// Chunk payload bytes received that we already had (duplicate ratio numerator).
    pub duplicate_payload_bytes: u64,
    /// Chunk payload bytes received that were new (duplicate ratio denominator).
    pub useful_payload_bytes: u64,
    /// Of the duplicate bytes: the stripe's tree parent sent a chunk we had already pulled
    /// (the tree was slower than our pull).
    pub duplicate_tree_after_pull_bytes: u64,
    /// Of the duplicate bytes: a chunk from anyone but the stripe's parent (mostly a
    /// pull's answer) that the tree parent had already brought.
    pub duplicate_pull_after_tree_bytes: u64,
    pub forged_chunks: u64,
    pub reparents: u64,
    pub pulls_sent: u64,
    pub pulls_served: u64,
    /// Requested chunks we declined (not held, or over the pull budget).
    pub pulls_declined: u64,
    /// New chunks that came from the stripe's tree parent (the rest came by pulls or
    /// from a former parent).
    pub chunks_from_parent: u64,
    /// Milliseconds spent without a tree parent, summed over stripes (a viewer lacking a
    /// parent lives on pulls for that stripe).
    pub orphan_ms: u64,
    /// Children dropped because they went silent (see `CHILD_SILENCE`).
    pub children_dropped_silent: u64,
    /// Parents changed for a shallower one (see `Node::move_up`).
    pub tree_moves: u64,
}

/// Verifies chunk signatures. The default verifies every chunk with Ed25519; a simulator
/// may share one memoizing verifier among its nodes (same bytes, same answer).
pub trait Verify: std::fmt::Debug + Send {
    fn verify(&mut self, channel: &ChannelId, chunk: &Chunk) -> bool;
}

/// Share of the upload the push trees may fill; the rest absorbs repair pulls, control
/// traffic and bursts (a full uplink queues, and queueing is lag at every hop below).
/// Slots are whole stripes, so a node's slot count rounds down: at 0.6 the viewers of the
/// issue's scenario (uploads 2–12 Mbit/s, 1.75× the stream on average) offered 0.92 slots
/// per slot needed and ~5 % of stripe-time went without a parent; at 0.8 they offer 1.27
/// (`rill sim`, 2,000 viewers: continuity 0.947 at 0.6, 0.989 at 0.8, with lent slots
/// counted against the home stripe).
pub const TREE_UPLOAD_SHARE: f64 = 0.8;
/// The same for the publisher and relays, lower: every newcomer's first subscribe and
/// hello go to a root, and the redirects and peer lists it answers with (Control, ahead of
/// the stream) must fit beside its trees. At 0.8, 5,000 viewers joining over 5 s left the
/// publisher's uplink no room for them and every chunk was late for seconds (`rill sim`).
pub const ROOT_TREE_UPLOAD_SHARE: f64 = 0.6;
/// Share of the upload that serves mesh pulls at least; a node also serves from what its
/// children leave unused of [`TREE_UPLOAD_SHARE`] (see `serve_budget_per_tick`). Trees and
/// pulls together stay below the link's capacity, so the uplink keeps some idle time and
/// queues stay short: a saturated uplink delays every chunk through it, which makes more
/// chunks late, which makes more pulls.
pub const PULL_UPLOAD_SHARE: f64 = 0.15;
/// Housekeeping period: parent checks, repairs, mesh upkeep.
pub const TICK: Duration = Duration::from_millis(100);
/// `Have` summaries go to mesh neighbours every this many ticks.
const HAVE_EVERY_TICKS: u32 = 3;
/// Passive view bound (HyParView: passive view is several times the active view).
pub const MAX_PASSIVE: usize = 64;
/// Peers we keep contact details of (children, parents, mesh, passive, candidates).
pub const MAX_DIRECTORY: usize = 1024;
/// Bootstrap peers kept as roots (a link names the publisher and a few relays).
pub const MAX_ROOTS: usize = 32;
/// Peers banned for forged chunks that we remember.
pub const MAX_BANNED: usize = 1024;
/// Peers remembered as silent (dropped as a parent for sending nothing); the oldest is
/// forgotten beyond this.
const MAX_SILENT: usize = 64;
/// How long a silent parent is not asked again: a dead node's session lingers until the
/// transport's idle timeout (30 s), and asking it costs a whole subscribe timeout while
/// the stripe goes without a parent.
const SILENT_FOR: Duration = Duration::from_secs(30);
/// A mesh neighbour we heard no summary from for this long is dropped as gone: summaries
/// come every [`HAVE_EVERY_TICKS`] ticks (300 ms), as Control, which the transport
/// retransmits, so this is several lost in a row.
const MESH_SILENCE: Duration = Duration::from_millis(2000);
/// A child we heard nothing from for this long is dropped and its slot freed. Children
/// send their parents the same summaries as mesh neighbours (every 300 ms, Control, which
/// the transport retransmits), so this is three lost in a row. Without it a crashed child
/// held its slot until the transport's idle timeout (30 s): in `rill sim
/// scenarios/issue-10k-churn.toml` the publisher's slots of one stripe were all held by
/// departed children from 47 s on, no one could reach the top of that stripe's tree, and
/// 7,003 of 7,073 viewers lost that stripe to the end of the run (`continuity_index`
/// 0.867). At 3 s, departed children went on taking their stripe's chunks from our uplink
/// for seconds after a mass departure (2,000 viewers, the same churn: `continuity_index`
/// 0.9965 at 1.5 s, 0.9967 at 1 s).
const CHILD_SILENCE: Duration = Duration::from_millis(1000);
/// A peer whose last summary came within this (one and a half summary periods) is taken as
/// alive when we pick a parent or name redirect targets: after a mass departure, a third
/// of the walks and of the subscribes to neighbours that advertised room went to nodes
/// already gone, each costing a subscribe timeout (500 ms) while the stripe had no parent.
const HEARD_WITHIN: Duration = Duration::from_millis(450);

/// Whether a peer last heard from `at` counts as alive now (`HEARD_WITHIN`).
fn heard_lately(now: Instant, at: Instant) -> bool {
    now.saturating_duration_since(at) < HEARD_WITHIN
}
/// How long a parent that lost its own feed is kept, counted from its last chunk. Its
/// summaries (parents send them to their children too) show it alive but holding nothing
/// of the stripe newer than what it sent: it is finding a new parent, whose resume then
/// flows on through it. Its whole subtree notices the silence when it does; without this
/// they all dropped their live parents and walked from the roots together, flooding the
/// publisher's uplink with redirects (`rill sim` of `scenarios/issue-10k-churn.toml` with
/// 2,000 viewers: in the 3 s after the mass departure 1,690 dead and 1,510 live parents
/// were dropped; with this, 52 live ones. 1 s and 2 s did as well as 1.5 s).
const STARVING_PATIENCE: Duration = Duration::from_millis(1500);
/// Chunks of its stripe a new parent sends a child that changed parents: what a dead
/// parent leaves undelivered between its last chunk and the child's re-subscription
/// (parent timeout plus a round trip), and no more, so that re-parenting never becomes a
/// burst on the new parent's uplink.
const RESUME_STRIPE_CHUNKS: u64 = 8;
/// Of those, the ones that reached the new parent within this go with its live chunks
/// (Stream); older ones behind them (Background). An orphan's newest missing chunks are
/// due within its playout latency, and behind the new parent's live traffic (its whole
/// uplink is that) they came too late; the oldest may be past saving, and ahead of the
/// live traffic all of them made the new parent's other children late, most after a mass
/// departure, when parents take several orphans at once. `rill sim
/// scenarios/issue-10k-churn.toml`, seed 1: all Background, `continuity_index` 0.9930
/// (0.7213 in the second of the departure); all Stream, 0.9924 (0.7213, and 0.9098 the
/// second after); 200 ms, 0.9946; 300 ms, 0.9958 (0.8671); 500 ms, 0.9947. Without churn
/// (`issue-10k.toml`) all Background 0.9993, all Stream 0.9996, 300 ms 0.9995.
const RESUME_URGENT_WITHIN: Duration = Duration::from_millis(300);
/// The head of a newcomer's keyframe group that a parent sends with its live chunks
/// (Stream), ahead of the rest of the group (Background): the first 200 ms of stream after
/// the keyframe, half the viewer's start margin (`rill_viewer::playout::DEFAULT_START_MARGIN`,
/// what a viewer must hold from its keyframe on before output may begin). Behind the live
/// chunks, from the nearly full uplinks of the flash crowd, the head came last and the
/// start waited for it. `rill testbed swarm --nodes 30 --duration 8 --runs 16 --seed S`
/// (seeds 41 and 57, each against its own control run), joins over 1 s /
/// `start_restarts` / `lost_chunks`: head as Background 103 / 60 / 170, 200 ms as Stream
/// 75 / 51 / 149. 400 ms did better still there, but every head sent ahead delays the
/// parent's other children: `rill sim` with 2,000 viewers (`scenarios/issue-10k.toml`
/// with `viewers = 2000`), `continuity_index` / `lost_chunks` / `arrival_lag_ms.p99`
/// 0.9996 / 54 / 563 as Background, 0.9996 / 88 / 592 at 200 ms, 0.9987 / 188 / 759 at
/// 400 ms. (The whole group as Stream made every other child late; see `adopt`.)
const GROUP_HEAD_SPAN: Duration = Duration::from_millis(200);
/// The channel's head: its first chunks, from seq 0. A node whose start (`first_needed`)
/// is among them still takes the chunks before its start that reach it: they are the
/// channel's beginning (an encoder's first bytes, e.g. ffmpeg's SDT, precede its first
/// keyframe), which a viewer present from the start outputs, and they travel other
/// stripes than the keyframe, so they may come second. 64 chunks is 1.6 s of 25 ms chunks.
/// (The viewer's playout keeps the same head until its first output.)
pub const CHANNEL_HEAD_CHUNKS: u64 = 64;
/// Parent candidates queued per stripe.
const MAX_CANDIDATES: usize = 32;
/// Peers remembered as tried in one parent search; past this the search forgets them and
/// may ask them again (a long search must not grow state without bound).
const MAX_TRIED: usize = 256;
/// Candidates in one Redirect: the strongest few children are enough to walk down one
/// level, and every byte of a redirect is upload the busiest nodes (the roots) lack.
const REDIRECT_CANDIDATES: usize = 4;
/// Peers in one peer-exchange answer.
const PEERS_PER_ANSWER: usize = 4;
/// Outstanding pull requests.
pub const MAX_PENDING_PULLS: usize = 256;
/// Chunks a peer may pull from us per tick (twice the stream's chunk rate per tick is
/// more than any honest repair needs; a flood beyond it is ignored and counted).
const MAX_SERVED_PER_PEER_PER_TICK: u32 = 16;
/// Transmits queued for the driver; beyond this the node is being flooded and drops.
pub const MAX_TRANSMITS: usize = 4096;
/// Children per stripe, whatever the upload (a relay with 1 Gbit/s still fans out to at
/// most this many, which bounds state and per-chunk work).
pub const MAX_CHILDREN_PER_STRIPE: usize = 64;
/// How long a newcomer given mesh contacts waits for their first `Have` (sent as soon as
/// they take it into their view, one round trip) before it starts a walk: a free slot a
/// neighbour advertises costs one subscribe, a walk one per level. Without the wait the
/// walks of a crowd start before any summary is in and end at the roots: `rill sim
/// scenarios/issue-10k.toml` (10,000 newcomers in 5 s) at 0 ms had seconds of continuity
/// near 0 while the publisher's uplink carried redirects; at 300 ms `continuity_index`
/// 0.998997, at 200 ms 0.999229 (with churn 0.981956 and 0.982921). The scenario's round
/// trips are at most 100 ms; on longer paths fewer summaries are in by then.
const FIRST_SUMMARY_WAIT: Duration = Duration::from_millis(200);
/// A chunk newer than all we hold, that a mesh neighbour's summary named this long ago,
/// is pulled even when the stripe's own cadence says wait: our path down that tree runs
/// far behind the neighbour's (a parent lost its feed, or we hang deep in the tree), and
/// one round trip beats it. Chunks a neighbour names are otherwise left to the tree:
/// neighbours sit at other depths of the same trees, and pulling every chunk as soon as
/// one was named, as rill did before, pulled from any neighbour a stripe period ahead
/// while the tree's copy came anyway. `rill sim scenarios/issue-10k-churn.toml`, seed 1:
/// pulling at once 0.9401 `continuity_index`, 0.0957 `duplicate_ratio`; the cadence alone
/// 0.9332, 0.0756; with this at 300 ms 0.9457, 0.0625 (at 200 ms, in an earlier build,
/// 0.9362). Without churn (`issue-10k.toml`) 0.9950, 0.0791 before; 0.9961, 0.0322 now.
const AHEAD_PULL_AFTER: Duration = Duration::from_millis(300);
/// The stream a newcomer's player holds from its start keyframe on, without a gap,
/// before it begins: 400 ms, the viewer's default start margin
/// (`rill_viewer::playout::DEFAULT_START_MARGIN` is this constant; its reason is there).
pub const START_SPAN: Duration = Duration::from_millis(400);
/// A chunk of that span still missing this long after our first chunk came is pulled,
/// whatever its stripe's cadence says. The parents send a group's older chunks behind
/// their live ones, and a busy parent's backlog held starts back: in `rill testbed swarm
/// --nodes 30` (traced), a first byte at 1215 ms waited for seq 54, which its stripe's
/// parent never sent; the cadence made it due 300 ms after the stripe's previous chunk,
/// itself pulled late, and it was first asked for at 1172 ms. 300 ms leaves the parents
/// time to send the span (a keyframe group's first 200 ms go with the live chunks; see
/// `GROUP_HEAD_SPAN`) and the pull one round trip before the 800 ms startup budget ends.
const START_SPAN_WAIT: Duration = Duration::from_millis(300);
/// A newcomer's start span also takes in the chunks of its group ingested this long
/// before the newest chunk it holds. A newcomer that starts at an old keyframe finds it
/// due almost at once, and its player waits (up to its start margin) for what falls due
/// within the margin, which runs past `START_SPAN` of the group: those chunks came behind
/// the parents' live ones, or on the stripes' cadence, and the start waited, or moved to
/// the next keyframe. 300 ms: older than the live edge by more than the trees' usual
/// spread. `rill testbed swarm --nodes 30 --duration 8 --runs 8 --seed S`, seeds 65–128
/// (64 runs), joins over 1 s / runs with every first byte within 1 s / `start_restarts`
/// / `lost_chunks`: 88 / 25 / 62 / 266 and, rerun, 98 / 19 / 81 / 247 without; 72 / 29 /
/// 58 / 164 with (run after those two, not in turn with them). `rill sim
/// scenarios/issue-10k.toml`: `lost_chunks` 143 -> 109, `arrival_lag_ms.p99` 785 -> 801.
const START_BACKLOG_AGE: Duration = Duration::from_millis(300);
/// How far past the first chunk that backlog reaches: one second, a keyframe interval of
/// the usual encoder settings, so that it stays a start's business and never becomes a
/// steady pull of everything behind the live edge.
const START_BACKLOG_MAX: Duration = Duration::from_secs(1);
/// A parent sends a newcomer its fast-join group (up to a keyframe interval of the
/// stripe, and the keyframe chunk, all at once) only while the groups it queued already
/// would leave its uplink within this, at the upload its live children leave spare; past
/// it, only the keyframe chunk and its live chunks, and its `Accept` says so: the
/// newcomer pulls the rest from its mesh neighbours at once. In a flash crowd a weak
/// interior node took five newcomers within 250 ms in `rill testbed swarm --nodes 30`
/// (traced), held 112 KB in its send queue, and one of them waited 500 ms for its first
/// chunk of the stripe and then left it. `rill testbed swarm --nodes 30 --duration
/// 8 --runs 8 --seed S`, seeds 1089-1120 (32 runs, in turn with the build before),
/// without / with: `lost_chunks` 162 / 111 (fewer with it in 18 seeds, more in 7), the p99
/// lag lower with it in 23 of the 32 seeds (median 456.8 / 424.0 ms) and within target in
/// 27 / 30 runs; joins over 1 s 36 / 33, but `start_restarts` 24 / 66 (a group pulled
/// comes later than one sent), and all three targets met in 16 / 13 runs. `rill sim
/// scenarios/issue-10k.toml`: `arrival_lag_ms.p99` 793.6 / 753.6, `continuity_index`
/// 0.9991 / 0.9993, `lost_chunks` 112 / 75; with churn 889.3 / 882.2, 0.9954 either way,
/// 798 / 586. Redirecting such newcomers one level down instead did better for startup
/// in the testbed (joins over 1 s 38 / 16 against the build before, seeds 1057-1088) but
/// worse in the simulator (`continuity_index` 0.9968, with churn 0.9928).
const GROUP_BACKLOG_LIMIT: Duration = Duration::from_millis(300);
/// A full parent takes a newcomer over its weakest child when the newcomer's upload is
/// at least this many times larger (hysteresis against churning the tree).
const PREEMPT_FACTOR: u32 = 2;

/// Hops a move to a shallower parent's free slot must save (see [`Node::move_up`]); one
/// more to take a leaf's place, since the leaf goes a level down. `rill sim` on the
/// issue's scenario cut to 15 s: the steady seconds' `arrival_lag_ms` p99 615 ms without
/// moves, 563 with a gain of 2 for free slots, 540 with 1, 525 with 1 and leaves' places
/// taken at 2.
const MOVE_MIN_GAIN: u8 = 1;

/// A depth counts (we advertise ours, and move on it) once it has held this long. Depths
/// read from chunks, and summaries come every few ticks: a node that just re-parented
/// into our subtree could still report its old, shallower depth, and moving under it
/// would close a cycle. Two seconds outlast a summary's age plus a chunk's way down a
/// deep subtree (`rill sim`: ~60 ms a hop, at most 14 hops).
const DEPTH_SETTLE: Duration = Duration::from_secs(2);

/// How long after asking to move up in a stripe we ask again, accepted or not.
const MOVE_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Parent {
    id: NodeId,
    since: Instant,
    last_chunk: Option<Instant>,
    /// Newest sequence number the parent has delivered to us (or, before its first chunk,
    /// the newest we held when it took us): pulls must not hide a silent parent.
    mark: Option<u64>,
    /// When the parent's last summary came, and what it said.
    have: Option<(Instant, Have)>,
    /// The parent's own parent in the stripe, as it told us (`Upstream`): where to look
    /// first if this parent dies.
    upstream: Option<PeerInfo>,
    /// The first of the stripe's chunks the parent sends us (its `Accept`): the stripe's
    /// chunks below it will not come down the tree.
    sends_from: u64,
    /// Our depth under this parent: overlay hops of the live chunks it sends us (0 before
    /// the first), and since when it has been that.
    depth: u8,
    depth_since: Instant,
}

impl StripeState {
    fn note_tried(&mut self, id: NodeId) {
        if self.tried.len() >= MAX_TRIED {
            self.tried.clear();
        }
        self.tried.insert(id);
    }
}

#[derive(Debug, Default)]
struct StripeState {
    parent: Option<Parent>,
    /// Subscribe sent, no answer yet: (to, when).
    pending: Option<(NodeId, Instant)>,
    /// The pending subscribe is a move to a shallower parent (see [`Node::move_up`]): we
    /// keep our parent unless it accepts.
    moving: bool,
    /// When we last asked to move up in this stripe.
    move_asked: Option<Instant>,
    candidates: VecDeque<NodeId>,
    children: BTreeSet<NodeId>,
    /// The first seq each child wants from us: where its fast-join group or resume
    /// started. A chunk below it that reaches us late (filling a gap of ours) is of no use
    /// to that child: it started after it, or has it already. Entries of children gone are
    /// pruned at each adoption, so it holds no more entries than the stripe had children
    /// since the last one.
    child_from: BTreeMap<NodeId, u64>,
    /// Newest chunk of this stripe we hold.
    latest: Option<u64>,
    /// Peers that redirected or refused us recently in this search (not retried at once).
    tried: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, Copy)]
struct MeshPeer {
    have: Have,
    /// When its last summary came (or when it joined our view).
    heard: Instant,
    /// Chunks served to this peer in the current tick.
    served: u32,
}

#[derive(Debug, Clone)]
struct Held {
    chunk: Chunk,
    hops: u8,
    arrived: Instant,
    via: Via,
}

/// How a held chunk first reached us (to tell duplicates apart by cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// From the stripe's tree parent.
    Tree,
    /// The answer to a pull of ours (from anyone else).
    Pull,
    /// Anything else: published here, a former parent's, unasked.
    Other,
}

#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    me: PeerInfo,
    role: Role,
    channel: ChannelId,
    rng: ChaCha8Rng,
    verifier: Box<dyn Verify>,
    /// Contact details of peers we know.
    directory: BTreeMap<NodeId, PeerInfo>,
    /// Bootstrap peers (publisher, relays): roots to restart a search from.
    roots: Vec<NodeId>,
    mesh: BTreeMap<NodeId, MeshPeer>,
    /// Hellos sent to grow the mesh, not answered yet.
    mesh_pending: BTreeMap<NodeId, Instant>,
    /// When we last heard from each child (any stripe). Bounded by our children: entries
    /// of peers no longer children go at the next tick.
    children_heard: BTreeMap<NodeId, Instant>,
    passive: BTreeSet<NodeId>,
    banned: BTreeSet<NodeId>,
    /// Parents we dropped for silence, and when (see [`SILENT_FOR`]).
    silent: BTreeMap<NodeId, Instant>,
    stripes: Vec<StripeState>,
    buffer: BTreeMap<u64, Held>,
    latest_keyframe: Option<u64>,
    /// The newest keyframe named in a redirect we followed: where a newcomer that holds no
    /// keyframe yet asks its parents to start (see `Message::Redirect`).
    keyframe_heard: u64,
    /// First sequence number this node wants (its start); repairs never go below it.
    first_needed: Option<u64>,
    /// When the first chunk reached us.
    first_arrival: Option<Instant>,
    pulls: BTreeMap<u64, (NodeId, Instant)>,
    /// Peers that declined a pull of ours, until when we do not ask them again (their
    /// budget is per tick). Only peers we pulled from get in, so it is bounded by
    /// `MAX_PENDING_PULLS`; expired entries go at each repair.
    declined_until: BTreeMap<NodeId, Instant>,
    next_tick: Instant,
    ticks: u32,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
    transmits_dropped: u64,
    /// Chunk bytes served to pulls in the current tick.
    served_bytes_tick: u64,
    /// Fast-join group bytes queued and, as far as our upload tells, not sent yet, as of
    /// `group_backlog_at` (see [`GROUP_BACKLOG_LIMIT`]).
    group_backlog_bytes: f64,
    group_backlog_at: Instant,
    /// A newcomer walks down from the roots only after this, if no mesh neighbour
    /// offered a slot by then (see [`FIRST_SUMMARY_WAIT`]).
    walk_after: Instant,
    /// When the mesh neighbours' summaries first named each newer `latest`: (latest, when),
    /// oldest first, at most `HAVE_WINDOW` entries.
    first_named: VecDeque<(u64, Instant)>,
    /// How long subscribes take to be answered (see [`Node::subscribe_timeout`]).
    answers: AnswerTimer,
    /// When the node first had a parent in every stripe (see [`Node::tree_joined_at`]).
    tree_joined_at: Option<Instant>,
}

/// Smoothed time from a subscribe to its answer and its variation, as RFC 6298 (§2)
/// estimates a round trip: a subscribe to a node that died unnoticed is given up after
/// what answers usually take, not after a fixed time sized for the slowest paths.
#[derive(Debug, Default, Clone, Copy)]
struct AnswerTimer {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl AnswerTimer {
    /// Bounds of the timeout: below the lower one a busy parent's answer (Control, but
    /// behind whatever its uplink is sending) looks like death; the upper one is the fixed
    /// timeout rill had before, which holds until answers are measured.
    const MIN: Duration = Duration::from_millis(150);
    const MAX: Duration = Duration::from_millis(500);

    fn sample(&mut self, rtt: Duration) {
        // RFC 6298 §2.2 and §2.3: alpha = 1/8, beta = 1/4.
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + err / 4;
                self.srtt = Some(srtt * 7 / 8 + rtt / 8);
            }
        }
    }

    /// RFC 6298 §2.3: SRTT + 4 × RTTVAR, within [`AnswerTimer::MIN`, `AnswerTimer::MAX`].
    fn timeout(&self) -> Duration {
        self.srtt.map_or(AnswerTimer::MAX, |srtt| {
            (srtt + self.rttvar * 4).clamp(AnswerTimer::MIN, AnswerTimer::MAX)
        })
    }
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        me: PeerInfo,
        role: Role,
        channel: ChannelId,
        bootstrap: Vec<PeerInfo>,
        now: Instant,
        seed: u64,
        verifier: Box<dyn Verify>,
    ) -> Node {
        let k = config.stripes.max(1) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Spread the nodes' ticks so they do not all fire at once.
        let phase = Duration::from_micros(rng.next_u64() % TICK.as_micros() as u64);
        let mut node = Node {
            config,
            me,
            role,
            channel,
            rng,
            verifier,
            directory: BTreeMap::new(),
            roots: Vec::new(),
            mesh: BTreeMap::new(),
            mesh_pending: BTreeMap::new(),
            children_heard: BTreeMap::new(),
            passive: BTreeSet::new(),
            banned: BTreeSet::new(),
            silent: BTreeMap::new(),
            stripes: (0..k).map(|_| StripeState::default()).collect(),
            buffer: BTreeMap::new(),
            latest_keyframe: None,
            keyframe_heard: 0,
            first_needed: None,
            first_arrival: None,
            pulls: BTreeMap::new(),
            declined_until: BTreeMap::new(),
            next_tick: now + phase,
            ticks: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
            transmits_dropped: 0,
            served_bytes_tick: 0,
            group_backlog_bytes: 0.0,
            group_backlog_at: now,
            walk_after: now,
            first_named: VecDeque::new(),
            answers: AnswerTimer::default(),
            tree_joined_at: None,
        };
        let me = node.me.id;
        let bootstrap: Vec<PeerInfo> = bootstrap.into_iter().filter(|p| p.id != me).take(MAX_ROOTS).collect();
        // Roots are the publisher and relays (flagged `relay`); a search walks down from
        // them, which cannot reach a node's own detached subtree, so no cycle forms. Other
        // bootstrap peers (viewers we were told of) are mesh contacts only. A bootstrap
        // list without flagged peers is all roots (an old or hand-made link).
        let any_flagged = bootstrap.iter().any(|p| p.relay);
        for peer in &bootstrap {
            node.learn(*peer);
            if peer.relay || !any_flagged {
                node.roots.push(peer.id);
            }
            node.passive.insert(peer.id);
        }
        if role != Role::Publisher {
            // Walk down from the strongest root (a relay, else the publisher). Mesh
            // neighbours that advertise free slots (`Have`) are asked first, without a walk,
            // which keeps subscribes off the roots' uplinks: when we were given mesh
            // contacts, the walk waits a moment for their first summaries.
            let mut roots = node.roots.clone();
            roots.sort_by_key(|id| std::cmp::Reverse(node.directory.get(id).map_or(0, |p| p.upload_kbps)));
            let mut contacts: Vec<NodeId> =
                bootstrap.iter().map(|p| p.id).filter(|id| !roots.contains(id)).collect();
            if contacts.is_empty() {
                for s in 0..k {
                    node.stripes[s].candidates = roots.iter().copied().collect();
                }
            } else {
                node.walk_after = now + FIRST_SUMMARY_WAIT;
            }
            contacts.extend(roots.iter().copied());
            for id in contacts.iter().take(node.config.mesh_size.max(1)) {
                node.say_hello(now, *id);
            }
            for s in 0..k {
                node.find_parent(now, s);
            }
        }
        node
    }

    pub fn id(&self) -> NodeId {
        self.me.id
    }

    fn k(&self) -> usize {
        self.stripes.len()
    }

    /// The stripe this node forwards in (viewers), by its id.
    pub fn home_stripe(id: &NodeId, stripes: u8) -> usize {
        let s = stripes.max(1) as u64;
        (u64::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3], id.0[4], id.0[5], id.0[6], id.0[7]]) % s)
            as usize
    }

    fn is_interior_peer(&self, info: &PeerInfo, stripe: usize) -> bool {
        info.relay || Node::home_stripe(&info.id, self.config.stripes) == stripe
    }

    fn interior_in(&self, stripe: usize) -> bool {
        match self.role {
            Role::Publisher | Role::Relay => true,
            Role::Viewer => Node::home_stripe(&self.me.id, self.config.stripes) == stripe,
        }
    }

    /// Children this node can feed in `stripe`.
    fn child_capacity(&self, stripe: usize) -> usize {
        if !self.interior_in(stripe) {
            return 0;
        }
        let slots = self.tree_slots();
        let per_stripe = match self.role {
            // Slots lent to other stripes' leaves are taken from the same uplink.
            Role::Viewer => slots.saturating_sub(self.lent_children(stripe)),
            Role::Publisher | Role::Relay => slots / self.k(),
        };
        per_stripe.clamp(if self.role == Role::Publisher { 1 } else { 0 }, MAX_CHILDREN_PER_STRIPE)
    }

    /// Children we feed in stripes other than `home`: slots lent out (viewers only).
    fn lent_children(&self, home: usize) -> usize {
        self.stripes.iter().enumerate().filter(|(s, _)| *s != home).map(|(_, st)| st.children.len()).sum()
    }

    /// One stripe's share of the stream, kbit/s (at least 1).
    fn stripe_kbps(&self) -> f64 {
        (self.config.stream_kbps as f64 / self.k() as f64).max(1.0)
    }

    /// Share of our upload planned for tree children ([`TREE_UPLOAD_SHARE`], or
    /// [`ROOT_TREE_UPLOAD_SHARE`] for roots).
    fn tree_share(&self) -> f64 {
        match self.role {
            Role::Viewer => TREE_UPLOAD_SHARE,
            Role::Publisher | Role::Relay => ROOT_TREE_UPLOAD_SHARE,
        }
    }

    /// Stripe copies our upload carries at [`Node::tree_share`].
    fn tree_slots(&self) -> usize {
        (self.config.upload_kbps as f64 * self.tree_share() / self.stripe_kbps()).floor() as usize
    }

    /// What our children's stripes take of our upload now, kbit/s.
    fn children_kbps(&self) -> f64 {
        self.stripes.iter().map(|s| s.children.len()).sum::<usize>() as f64 * self.stripe_kbps()
    }

    /// A viewer whose home stripe leaves slots unused lends them to *leaves* of other
    /// stripes (SplitStream's spare capacity group, Castro et al. §4.2): random home
    /// stripes and uploads leave some trees short of slots, and a leaf without a parent
    /// lives on pulls. Only to leaves, and only while our own parent in that stripe is
    /// interior (or a root), so no cycle can form. One slot stays free for the home stripe.
    fn lends_to(&self, stripe: usize, newcomer: &PeerInfo) -> bool {
        // Only under an interior parent: a borrower never lends in that stripe itself, so
        // lending chains are one level deep and cannot close a cycle between leaves.
        let parent_interior = self.stripes[stripe].parent.is_some_and(|p| {
            self.roots.contains(&p.id) || self.is_interior_peer(&self.info_of(p.id), stripe)
        });
        self.role == Role::Viewer
            && parent_interior
            && !self.interior_in(stripe)
            && !self.is_interior_peer(newcomer, stripe)
            && self.stripes.iter().map(|s| s.children.len()).sum::<usize>() + 1 < self.tree_slots()
    }

    // -----------------------------------------------------------------------------------
    // Output helpers

    fn info_of(&self, id: NodeId) -> PeerInfo {
        self.directory.get(&id).copied().unwrap_or(PeerInfo {
            id,
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            upload_kbps: 0,
            relay: false,
        })
    }

    fn send(&mut self, to: NodeId, message: Message, class: Class) {
        self.send_with_deadline(to, message, class, None);
    }

    /// A live chunk down the tree.
    fn send_chunk(&mut self, now: Instant, to: NodeId, message: Message) {
        self.send_with_deadline(to, message, Class::Stream, Some(now + CHUNK_SEND_DEADLINE));
    }

    /// A repair (a served pull, a fast-join group, a resume, or such a chunk passed on):
    /// below the trees' traffic, since a repair must never delay the live chunks.
    fn send_repair_chunk(&mut self, now: Instant, to: NodeId, message: Message) {
        self.send_with_deadline(to, message, Class::Background, Some(now + CHUNK_SEND_DEADLINE));
    }

    fn send_with_deadline(&mut self, to: NodeId, message: Message, class: Class, deadline: Option<Instant>) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.transmits_dropped += 1;
            return;
        }
        let to = self.info_of(to);
        self.transmits.push_back(Transmit { to, message, class, deadline });
    }

    fn learn(&mut self, info: PeerInfo) {
        if info.id == self.me.id || self.banned.contains(&info.id) {
            return;
        }
        if self.directory.len() >= MAX_DIRECTORY && !self.directory.contains_key(&info.id) {
            // Forget a passive-only peer to make room.
            let victim = self.passive.iter().copied().find(|id| !self.is_attached(id));
            match victim {
                Some(v) => {
                    self.passive.remove(&v);
                    self.directory.remove(&v);
                }
                None => return,
            }
        }
        self.directory.insert(info.id, info);
    }

    /// Whether a third node can reach `info` at the address it carries. The driver blanks
    /// the address of a peer whose packets come from another IP than the one it names
    /// (behind NAT): only the session that peer opened reaches it, so it is never passed
    /// on, and one passed to us is not kept (a subscribe to it costs a whole timeout).
    fn reachable(info: &PeerInfo) -> bool {
        !info.addr.ip().is_unspecified() && info.addr.port() != 0
    }

    /// A peer we have a tree or mesh relation with.
    fn is_attached(&self, id: &NodeId) -> bool {
        self.mesh.contains_key(id)
            || self.roots.contains(id)
            || self.stripes.iter().any(|s| s.children.contains(id) || s.parent.is_some_and(|p| p.id == *id))
    }

    fn add_passive(&mut self, id: NodeId) {
        if id == self.me.id || self.banned.contains(&id) || self.mesh.contains_key(&id) {
            return;
        }
        if self.passive.len() >= MAX_PASSIVE {
            let n = self.rng.next_u32() as usize % self.passive.len();
            if let Some(victim) = self.passive.iter().nth(n).copied() {
                self.passive.remove(&victim);
            }
        }
        self.passive.insert(id);
    }

    fn say_hello(&mut self, now: Instant, to: NodeId) {
        self.mesh_pending.insert(to, now);
        self.send(to, Message::Hello { info: self.me }, Class::Control);
    }

    // -----------------------------------------------------------------------------------
    // Inputs

    /// Publisher: a new chunk, already signed.
    pub fn publish(&mut self, now: Instant, chunk: Chunk) {
        if self.role != Role::Publisher {
            return;
        }
        let (seq, stripe) = (chunk.seq, chunk.stripe as usize);
        if chunk.keyframe {
            self.latest_keyframe = Some(seq);
        }
        self.first_needed.get_or_insert(seq);
        for c in self.forwarding_order(stripe) {
            self.send_chunk(now, c, Message::Chunk { hops: 1, chunk: chunk.clone() });
        }
        if let Some(st) = self.stripes.get_mut(stripe) {
            st.latest = Some(st.latest.map_or(seq, |l| l.max(seq)));
        }
        self.store(chunk, 0, now, Via::Other);
    }

    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        if let Some(heard) = self.children_heard.get_mut(&from) {
            *heard = now;
        }
        if self.banned.contains(&from) || from == self.me.id {
            return;
        }
        match message {
            Message::Hello { info } => self.on_hello(now, from, info),
            Message::Peers { peers } => {
                for p in peers.into_iter().take(MAX_PEERS_PER_MESSAGE).filter(Node::reachable) {
                    self.learn(p);
                    self.add_passive(p.id);
                }
            }
            Message::Subscribe { stripe, starting, from_seq, info } => {
                if info.id == from {
                    self.learn(info);
                }
                self.on_subscribe(now, from, stripe as usize, starting, from_seq)
            }
            Message::Accept { stripe, sends_from } => self.on_accept(now, from, stripe as usize, sends_from),
            Message::Redirect { stripe, keyframe, candidates } => {
                self.on_redirect(now, from, stripe as usize, keyframe, candidates)
            }
            Message::Unsubscribe { stripe } => self.on_unsubscribe(now, from, stripe as usize),
            Message::Have(have) => {
                for st in &mut self.stripes {
                    if let Some(p) = st.parent.as_mut().filter(|p| p.id == from) {
                        p.have = Some((now, have));
                    }
                }
                if let Some(m) = self.mesh.get_mut(&from) {
                    m.have = have;
                    m.heard = now;
                    if self.first_named.back().is_none_or(|(l, _)| have.latest > *l) {
                        if self.first_named.len() >= HAVE_WINDOW as usize {
                            self.first_named.pop_front();
                        }
                        self.first_named.push_back((have.latest, now));
                    }
                    if have.has_free_slots() {
                        for s in 0..self.k() {
                            self.find_parent(now, s);
                        }
                    }
                }
            }
            Message::Request { seqs } => self.on_request(now, from, seqs),
            Message::Declined { seqs } => self.on_declined(now, from, seqs),
            Message::Chunk { hops, chunk } => self.on_chunk(now, from, hops, chunk),
            Message::Leave => self.forget(now, from),
            Message::Upstream { stripe, parent } => {
                let st = self.stripes.get_mut(stripe as usize);
                if let Some(p) = st.and_then(|st| st.parent.as_mut()).filter(|p| p.id == from) {
                    if Node::reachable(&parent) && parent.id != self.me.id {
                        p.upstream = Some(parent);
                    }
                }
            }
        }
    }

    /// The transport gave up on `peer` (session closed or unreachable).
    pub fn handle_peer_lost(&mut self, now: Instant, peer: NodeId) {
        self.forget(now, peer);
    }

    fn on_hello(&mut self, now: Instant, from: NodeId, info: PeerInfo) {
        if info.id != from {
            return;
        }
        self.learn(info);
        let was_pending = self.mesh_pending.remove(&from).is_some();
        if self.mesh.contains_key(&from) {
            return;
        }
        // HyParView keeps the active view symmetric: answer a Hello we did not ask for
        // with our own when we take the peer; a full view only passes on contacts.
        if self.mesh.len() < self.config.mesh_size {
            self.mesh.insert(from, MeshPeer { have: Have::default(), heard: now, served: 0 });
            self.passive.remove(&from);
            if !was_pending {
                self.send(from, Message::Hello { info: self.me }, Class::Control);
            }
            // Our summary at once, not at the next round: a newcomer looks for free slots
            // in it before walking the trees.
            let have = self.have(now);
            self.send(from, Message::Have(have), Class::Control);
        } else {
            self.add_passive(from);
        }
        let peers = self.sample_peers(from);
        if !peers.is_empty() && !was_pending {
            self.send(from, Message::Peers { peers }, Class::Control);
        }
        let _ = now;
    }

    /// Some peers for peer exchange: mesh and passive, random, never `except`.
    fn sample_peers(&mut self, except: NodeId) -> Vec<PeerInfo> {
        let pool: Vec<NodeId> =
            self.mesh.keys().chain(self.passive.iter()).copied().filter(|id| *id != except).collect();
        let mut picked = Vec::new();
        let mut seen = BTreeSet::new();
        for _ in 0..pool.len().min(MAX_PEERS_PER_MESSAGE * 2) {
            if picked.len() >= PEERS_PER_ANSWER || pool.is_empty() {
                break;
            }
            let id = pool[self.rng.next_u32() as usize % pool.len()];
            if seen.insert(id) {
                if let Some(info) = self.directory.get(&id).filter(|i| Node::reachable(i)) {
                    picked.push(*info);
                }
            }
        }
        picked
    }

    fn on_subscribe(&mut self, now: Instant, from: NodeId, stripe: usize, starting: bool, from_seq: u64) {
        if stripe >= self.k() {
            return;
        }
        if self.stripes[stripe].children.contains(&from) {
            // What it first asked from: at most where we began sending (a resume may have
            // begun later), so it waits for nothing that will not come.
            let sends_from = self.stripes[stripe].child_from.get(&from).copied().unwrap_or(0);
            self.send(from, Message::Accept { stripe: stripe as u8, sends_from }, Class::Control);
            return;
        }
        let cap = self.child_capacity(stripe);
        if self.stripes[stripe].children.len() < cap || self.lends_to(stripe, &self.info_of(from)) {
            self.adopt(now, from, stripe, starting, from_seq);
            return;
        }
        // A child we have not heard from for a while (no summary in one and a half
        // periods) has most likely died, as `check_children` will conclude a little
        // later: its slot goes to the newcomer now, typically its own orphaned child
        // coming up from below (see `ask_upstream_first`). If it is alive after all, the
        // redirect tells it to look elsewhere at once.
        let quiet = self.stripes[stripe]
            .children
            .iter()
            .copied()
            .find(|c| self.children_heard.get(c).is_none_or(|at| !heard_lately(now, *at)));
        if let Some(gone) = quiet.filter(|_| self.interior_in(stripe)) {
            self.stripes[stripe].children.remove(&gone);
            self.adopt(now, from, stripe, starting, from_seq);
            let candidates = self.redirect_candidates(now, stripe, gone);
            self.redirect(gone, stripe, candidates);
            return;
        }
        // Our home stripe's slots are lent out: the home stripe comes first (lent slots
        // are spare capacity, and a leaf of another stripe finds another lender more
        // easily than this stripe finds another interior node). Take one back.
        if self.interior_in(stripe)
            && self.role == Role::Viewer
            && self.stripes[stripe].children.len() < self.tree_slots()
        {
            if let Some((lent_stripe, borrower)) = self
                .stripes
                .iter()
                .enumerate()
                .filter(|(s, _)| *s != stripe)
                .find_map(|(s, st)| st.children.iter().next().map(|c| (s, *c)))
            {
                self.stripes[lent_stripe].children.remove(&borrower);
                let candidates = self.redirect_candidates(now, lent_stripe, borrower);
                self.redirect(borrower, lent_stripe, candidates);
                self.adopt(now, from, stripe, starting, from_seq);
                return;
            }
        }
        // Full. An interior newcomer (one that will forward this stripe) takes the place
        // of a leaf child (SplitStream's push-down: leaves must not hold slots near the
        // root), or of an interior child with far less upload (capacity-ordered trees).
        // The displaced child is redirected to the newcomer, one level down, so the
        // newcomer must be reachable by others (not only over its own session).
        let newcomer = self.info_of(from);
        if cap > 0 && Node::reachable(&newcomer) && self.is_interior_peer(&newcomer, stripe) {
            let displaced = self.stripes[stripe]
                .children
                .iter()
                .map(|c| {
                    let info = self.info_of(*c);
                    (self.is_interior_peer(&info, stripe), info.upload_kbps, *c)
                })
                .min();
            let take = match displaced {
                Some((false, _, leaf)) => Some(leaf),
                Some((true, kbps, weak)) if newcomer.upload_kbps >= PREEMPT_FACTOR * kbps.max(1) => {
                    Some(weak)
                }
                _ => None,
            };
            if let Some(victim) = take {
                self.stripes[stripe].children.remove(&victim);
                self.adopt(now, from, stripe, starting, from_seq);
                let mut candidates = vec![newcomer];
                candidates.extend(
                    self.redirect_candidates(now, stripe, victim).into_iter().filter(|c| c.id != from),
                );
                candidates.truncate(MAX_PEERS_PER_MESSAGE);
                self.redirect(victim, stripe, candidates);
                return;
            }
        }
        let candidates = self.redirect_candidates(now, stripe, from);
        self.redirect(from, stripe, candidates);
    }

    /// Send `to` elsewhere in `stripe`, naming our newest keyframe (see `Message::Redirect`).
    fn redirect(&mut self, to: NodeId, stripe: usize, candidates: Vec<PeerInfo>) {
        let keyframe = self.latest_keyframe.unwrap_or(0);
        self.send(to, Message::Redirect { stripe: stripe as u8, keyframe, candidates }, Class::Control);
    }

    /// Tell `child` who our parent in `stripe` is (see `Message::Upstream`).
    fn send_upstream(&mut self, child: NodeId, stripe: usize) {
        let Some(parent) = self.stripes[stripe].parent else { return };
        let parent = self.info_of(parent.id);
        if Node::reachable(&parent) {
            self.send(child, Message::Upstream { stripe: stripe as u8, parent }, Class::Control);
        }
    }

    /// Our parent in `stripe` is gone: ask its parent first. It sat just above us, so a
    /// slot there is as shallow as ours was, and it is not in our subtree, so no cycle
    /// forms; the roots, where a walk starts otherwise, are then left to the nodes that
    /// cannot do better (after a mass departure thousands of walks started there at once,
    /// and their redirects took the publisher's whole uplink).
    fn ask_upstream_first(&mut self, now: Instant, stripe: usize, gone: &Parent) {
        let Some(up) = gone.upstream else { return };
        if self.banned.contains(&up.id)
            || self.is_silent(now, &up.id)
            || self.stripes[stripe].children.contains(&up.id)
        {
            return;
        }
        self.learn(up);
        let st = &mut self.stripes[stripe];
        st.candidates.retain(|c| *c != up.id);
        st.candidates.push_front(up.id);
        st.candidates.truncate(MAX_CANDIDATES);
    }

    fn adopt(&mut self, now: Instant, child: NodeId, stripe: usize, starting: bool, from_seq: u64) {
        let st = &mut self.stripes[stripe];
        st.children.insert(child);
        let children = &st.children;
        st.child_from.retain(|c, _| children.contains(c));
        self.children_heard.insert(child, now);
        if starting {
            let key = self.start_keyframe(from_seq);
            // Without a keyframe we send no group: only what arrives after our newest.
            let after_newest = self.buffer.keys().next_back().map_or(0, |n| n + 1);
            // The groups we queued already would hold this one back (see
            // `GROUP_BACKLOG_LIMIT`): only the keyframe chunk, and our live chunks; the
            // `Accept` says so, and the newcomer pulls the rest from its neighbours at once.
            let busy = key.is_some() && self.group_backlog(now) > GROUP_BACKLOG_LIMIT;
            self.accept(child, stripe, if busy { after_newest } else { key.unwrap_or(after_newest) });
            // Fast join: the start keyframe chunk itself (whatever its stripe: the
            // newcomer can start decoding as soon as any one parent accepts it), ahead of
            // everything but the live chunks already queued; then this stripe's chunks
            // after it, which a player starting at that keyframe needs next: its head
            // (`GROUP_HEAD_SPAN`) with our live chunks, the rest behind them (Background):
            // a group is ~1 s of the stripe, and all of it ahead of the live chunks made
            // every other child late. Without the rest of the group
            // (the newcomer pulling it instead), `rill demo` viewers skipped chunks at
            // their start (continuity 0.9992, 62 lost chunks, against 1.0 and 0).
            let Some(key) = key else { return };
            // A newcomer asks for all its stripes at once, often of one parent: the
            // keyframe chunk goes once (the publisher sent it four times to each of the
            // flash crowd's first viewers, ahead of their groups).
            let key_sent = self
                .stripes
                .iter()
                .any(|st| st.children.contains(&child) && st.child_from.get(&child) == Some(&key));
            self.stripes[stripe].child_from.insert(child, if busy { after_newest } else { key });
            let group: Vec<Held> = self
                .buffer
                .range(key..)
                .filter(|(&seq, h)| {
                    (seq == key && !key_sent) || (!busy && seq != key && h.chunk.stripe as usize == stripe)
                })
                .map(|(_, h)| h.clone())
                .collect();
            // `busy` above drained the estimate to `now` (we hold a keyframe here).
            self.group_backlog_bytes += group.iter().map(|h| h.chunk.payload.len() as f64).sum::<f64>();
            // The group's head, its first `GROUP_HEAD_SPAN` of stream, goes with our live
            // chunks: the newcomer starts output once it holds that much.
            let head_until_us = self
                .buffer
                .get(&key)
                .map(|h| h.chunk.ingest_us.saturating_add(GROUP_HEAD_SPAN.as_micros() as u64));
            // A group started at an older keyframe than our newest (the newcomer asked for
            // the one its other parents started at): from the newer keyframe on, the
            // chunks go with our live ones too. A group that comes too late for its
            // player moves the start there (the viewer's `start_restarts`), and behind the
            // older group those chunks held that start back: in `rill testbed swarm
            // --nodes 30` (traced), a newcomer whose start keyframe was 0.9 s old moved to
            // the next keyframe at 570 ms, and waited until 1158 ms for that keyframe's
            // second chunk, queued at its parent behind eight chunks of the older group.
            // `rill testbed swarm --nodes 30 --duration 8 --runs 8 --seed S`, seeds
            // 1025-1088 (64 runs, in turn with the build before): joins over 1 s 85 -> 71,
            // runs meeting all three targets 18 -> 28, `lost_chunks` 341 -> 275. `rill sim
            // scenarios/issue-10k.toml`: `arrival_lag_ms.p99` 800.8 -> 793.6,
            // `continuity_index` 0.9991 either way.
            let newer_keyframe = self.latest_keyframe.filter(|&k| k > key);
            for h in group {
                let with_live = head_until_us.is_some_and(|until| h.chunk.ingest_us < until)
                    || newer_keyframe.is_some_and(|k| h.chunk.seq >= k);
                let message = Message::Chunk { hops: h.hops.saturating_add(1), chunk: h.chunk.clone() };
                if h.chunk.seq == key || with_live {
                    self.send_chunk(now, child, message);
                } else {
                    self.send_repair_chunk(now, child, message);
                }
            }
            return;
        }
        // A node changing parents gets this stripe from `from_seq` (what its old
        // parent left undelivered), within the last few of the stripe's chunks: the
        // freshest with our live chunks, the rest behind them (`RESUME_URGENT_WITHIN`).
        let newest = self.buffer.keys().next_back().copied().unwrap_or(0);
        let from = from_seq.max(newest.saturating_sub(RESUME_STRIPE_CHUNKS * self.k() as u64));
        self.accept(child, stripe, from);
        self.stripes[stripe].child_from.insert(child, from_seq);
        let chunks: Vec<Held> = self
            .buffer
            .range(from..)
            .filter(|(_, h)| h.chunk.stripe as usize == stripe)
            .map(|(_, h)| h.clone())
            .collect();
        for h in chunks {
            let urgent = now.saturating_duration_since(h.arrived) < RESUME_URGENT_WITHIN;
            let message = Message::Chunk { hops: h.hops.saturating_add(1), chunk: h.chunk };
            if urgent {
                self.send_chunk(now, child, message);
            } else {
                self.send_repair_chunk(now, child, message);
            }
        }
    }

    /// How long the fast-join groups we queued take to leave our uplink at the upload our
    /// live children leave spare (at least a tenth of it), now; drains the estimate.
    fn group_backlog(&mut self, now: Instant) -> Duration {
        let spare_kbps = self.config.upload_kbps as f64 - self.children_kbps();
        // Bytes per second, at least a tenth of the upload (and never 0, to divide by).
        let spare = (spare_kbps.max(self.config.upload_kbps as f64 / 10.0) * 1000.0 / 8.0).max(1.0);
        let elapsed = now.saturating_duration_since(self.group_backlog_at).as_secs_f64();
        self.group_backlog_bytes = (self.group_backlog_bytes - spare * elapsed).max(0.0);
        self.group_backlog_at = now;
        Duration::try_from_secs_f64(self.group_backlog_bytes / spare).unwrap_or(Duration::MAX)
    }

    /// Tell a new child it is one, and from which of the stripe's chunks on we send it.
    fn accept(&mut self, child: NodeId, stripe: usize, sends_from: u64) {
        self.send(child, Message::Accept { stripe: stripe as u8, sends_from }, Class::Control);
        self.send_upstream(child, stripe);
    }

    /// The keyframe a newcomer's group starts at: the one it asked for (`asked`: where it
    /// started through its other parents' groups, or the newest keyframe a redirect named)
    /// if it is recent (within `HAVE_WINDOW` of our newest chunk: an older start would be
    /// a burst the newcomer's player has moved past) and we hold it, or do not hold it
    /// yet but it is newer than our own newest keyframe (we lag behind whoever named it,
    /// or its stripe's chunk is still on the way: we send from it as it comes, not the
    /// older group before it); else our newest keyframe. A start beyond `HAVE_WINDOW`
    /// past our newest chunk is not taken: we would send the newcomer nothing for long.
    fn start_keyframe(&self, asked: u64) -> Option<u64> {
        let newest = self.buffer.keys().next_back().copied()?;
        let near = asked > 0
            && asked.saturating_add(HAVE_WINDOW) >= newest
            && asked <= newest.saturating_add(HAVE_WINDOW);
        let take = match self.buffer.get(&asked) {
            Some(h) => h.chunk.keyframe,
            None => self.latest_keyframe.is_none_or(|k| asked > k),
        };
        if near && take {
            return Some(asked);
        }
        self.latest_keyframe
    }

    /// Children of `stripe` in the order a chunk goes to them: those that forward it
    /// further first, strongest upload first, then leaves. The uplink sends copies one
    /// after another, so the order decides who waits; a leaf waiting delays only itself,
    /// an interior child waiting delays its whole subtree.
    fn forwarding_order(&self, stripe: usize) -> Vec<NodeId> {
        let Some(st) = self.stripes.get(stripe) else { return Vec::new() };
        let mut order: Vec<(bool, std::cmp::Reverse<u32>, NodeId)> = st
            .children
            .iter()
            .map(|c| {
                let info = self.info_of(*c);
                (!self.is_interior_peer(&info, stripe), std::cmp::Reverse(info.upload_kbps), *c)
            })
            .collect();
        order.sort();
        order.into_iter().map(|(_, _, c)| c).collect()
    }

    /// Where to send a subscriber we cannot take: our interior children in the stripe
    /// (they sit one level below us), then interior peers we know, strongest first.
    fn redirect_candidates(&mut self, now: Instant, stripe: usize, except: NodeId) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self.stripes[stripe]
            .children
            .iter()
            .filter(|c| **c != except && self.children_heard.get(c).is_some_and(|at| heard_lately(now, *at)))
            .filter_map(|c| self.directory.get(c).copied())
            .filter(|i| Node::reachable(i) && self.is_interior_peer(i, stripe))
            .collect();
        // Random order: walkers sent down the same strongest child would all descend the
        // same full path; spread over the children they find free slots sooner.
        for i in (1..out.len()).rev() {
            let j = self.rng.next_u32() as usize % (i + 1);
            out.swap(i, j);
        }
        if out.is_empty() {
            let mut more: Vec<PeerInfo> = self
                .mesh
                .keys()
                .chain(self.passive.iter())
                .filter(|id| **id != except)
                .filter_map(|id| self.directory.get(id).copied())
                .filter(|i| {
                    Node::reachable(i)
                        && self.is_interior_peer(i, stripe)
                        && !out.iter().any(|o| o.id == i.id)
                })
                .collect();
            more.sort_by_key(|i| std::cmp::Reverse(i.upload_kbps));
            out.extend(more);
        }
        out.truncate(REDIRECT_CANDIDATES);
        out
    }

    fn on_accept(&mut self, now: Instant, from: NodeId, stripe: usize, sends_from: u64) {
        if stripe >= self.k() {
            return;
        }
        let st = &mut self.stripes[stripe];
        if let Some((_, asked)) = st.pending.filter(|(p, _)| *p == from) {
            st.pending = None;
            let waited_ms = now.saturating_duration_since(asked).as_millis() as u64;
            tracing::trace!(stripe, from = %from, waited_ms, sends_from, "accepted");
            self.answers.sample(now.saturating_duration_since(asked));
            if let Some(old) = st.parent.take() {
                if old.id != from {
                    self.send(old.id, Message::Unsubscribe { stripe: stripe as u8 }, Class::Control);
                }
            }
            let mark = self.buffer.keys().next_back().copied();
            let st = &mut self.stripes[stripe];
            if st.moving {
                self.stats.tree_moves += 1;
            }
            st.moving = false;
            st.parent = Some(Parent {
                id: from,
                since: now,
                last_chunk: None,
                mark,
                have: None,
                upstream: None,
                sends_from,
                depth: 0,
                depth_since: now,
            });
            st.candidates.clear();
            st.tried.clear();
            if self.tree_joined_at.is_none() && self.stripes.iter().all(|s| s.parent.is_some()) {
                self.tree_joined_at = Some(now);
            }
            let children: Vec<NodeId> = self.stripes[stripe].children.iter().copied().collect();
            for c in children {
                self.send_upstream(c, stripe);
            }
        } else if self.stripes[stripe].parent.is_none_or(|p| p.id != from) {
            // A late answer to a search we gave up: decline.
            self.send(from, Message::Unsubscribe { stripe: stripe as u8 }, Class::Control);
        }
    }

    fn on_redirect(
        &mut self,
        now: Instant,
        from: NodeId,
        stripe: usize,
        keyframe: u64,
        candidates: Vec<PeerInfo>,
    ) {
        if stripe >= self.k() {
            return;
        }
        let candidates: Vec<PeerInfo> = candidates.into_iter().filter(Node::reachable).collect();
        for c in &candidates {
            self.learn(*c);
        }
        let st = &mut self.stripes[stripe];
        let was_parent = st.parent.is_some_and(|p| p.id == from);
        let asked = st.pending.filter(|(p, _)| *p == from).map(|(_, at)| at);
        let was_pending = asked.is_some();
        if let Some(at) = asked {
            let waited_ms = now.saturating_duration_since(at).as_millis() as u64;
            tracing::trace!(stripe, from = %from, waited_ms, candidates = candidates.len(), "redirected");
            self.answers.sample(now.saturating_duration_since(at));
        }
        if !was_parent && !was_pending {
            return;
        }
        if was_pending && st.moving && st.parent.is_some() {
            // The shallower parent filled up: stay where we are (no walk from there).
            st.pending = None;
            st.moving = false;
            return;
        }
        self.keyframe_heard = self.keyframe_heard.max(keyframe);
        if was_parent {
            st.parent = None;
            self.stats.reparents += 1;
        }
        let st = &mut self.stripes[stripe];
        st.pending = None;
        st.moving = false;
        st.note_tried(from);
        // Redirect candidates go first, in the order given.
        for c in candidates.iter().rev() {
            if c.id != self.me.id && !st.tried.contains(&c.id) {
                st.candidates.retain(|x| *x != c.id);
                st.candidates.push_front(c.id);
            }
        }
        st.candidates.truncate(MAX_CANDIDATES);
        self.find_parent(now, stripe);
    }

    fn on_unsubscribe(&mut self, now: Instant, from: NodeId, stripe: usize) {
        if stripe >= self.k() {
            return;
        }
        self.stripes[stripe].children.remove(&from);
        if self.stripes[stripe].parent.is_some_and(|p| p.id == from) {
            self.stripes[stripe].parent = None;
            self.stats.reparents += 1;
            self.find_parent(now, stripe);
        }
    }

    /// Upload bytes per tick for serving pulls: [`PULL_UPLOAD_SHARE`], and what our
    /// children leave unused of the trees' share. A node plans trees and pulls together
    /// within its tree share and `PULL_UPLOAD_SHARE` of its upload; a leaf, or a parent
    /// whose children left, would otherwise leave most of it idle just when the swarm
    /// needs repairs most. `rill sim scenarios/issue-10k-churn.toml --seed S`, S = 1, 2, 3:
    /// `continuity_index` 0.9954, 0.9948, 0.9946 with the pull share alone, 0.9955,
    /// 0.9953, 0.9951 with this (`lost_chunks` 586, 1,186, 803 → 353, 612, 597). `rill
    /// testbed swarm --nodes 30 --duration 8 --runs 8`, seeds 1121–1144 (24 runs each):
    /// first byte within 1 s in 15 runs against 5, joins over 1 s 19 against 53, the
    /// same lost chunks (64 against 65).
    fn serve_budget_per_tick(&self) -> u64 {
        let upload_kbps = self.config.upload_kbps as f64;
        let spare_kbps = (upload_kbps * (self.tree_share() + PULL_UPLOAD_SHARE) - self.children_kbps())
            .max(upload_kbps * PULL_UPLOAD_SHARE);
        (spare_kbps * 1000.0 / 8.0 * TICK.as_secs_f64()) as u64
    }

    fn on_request(&mut self, now: Instant, from: NodeId, seqs: Vec<u64>) {
        // Pulls are a mesh service; strangers use the tree, and a viewer declines theirs
        // at once (their view of us is one-sided, or we were neighbours until lately), so
        // that they ask elsewhere. The publisher and relays also serve nodes whose
        // neighbours all lack a chunk (see `repair`), within the same upload budget.
        let budget = match self.mesh.get(&from) {
            _ if self.banned.contains(&from) => return,
            Some(peer) => MAX_SERVED_PER_PEER_PER_TICK.saturating_sub(peer.served),
            None if self.role != Role::Viewer => MAX_SERVED_PER_PEER_PER_TICK,
            None => 0,
        };
        let mut served = 0u32;
        let mut declined = Vec::new();
        for seq in seqs.into_iter().take(MAX_REQUEST) {
            // Within our spare upload; at least one chunk per tick, so a weak node still helps.
            let spent = served >= budget
                || (self.served_bytes_tick > 0 && self.served_bytes_tick >= self.serve_budget_per_tick());
            match self.buffer.get(&seq) {
                Some(h) if !spent => {
                    let msg = Message::Chunk { hops: h.hops.saturating_add(1), chunk: h.chunk.clone() };
                    served += 1;
                    self.served_bytes_tick += h.chunk.payload.len() as u64;
                    self.send_repair_chunk(now, from, msg);
                }
                _ => declined.push(seq),
            }
        }
        if let Some(peer) = self.mesh.get_mut(&from) {
            peer.served += served;
        }
        self.stats.pulls_served += served as u64;
        tracing::trace!(from = %from, served, declined = declined.len(), "request");
        if !declined.is_empty() {
            self.stats.pulls_declined += declined.len() as u64;
            self.send(from, Message::Declined { seqs: declined }, Class::Control);
        }
    }

    /// A peer will not send chunks we pulled from it: ask other holders now, not after
    /// the pull timeout. In `rill testbed swarm --nodes 30 --runs 8` (traced, before
    /// declines existed), servers left a quarter of the held chunks asked of them unsent
    /// for a spent budget (662 against 2,006 sent; weak uplinks serve about one chunk a
    /// tick), and a newcomer's start waited 400 ms for each before asking again.
    fn on_declined(&mut self, now: Instant, from: NodeId, seqs: Vec<u64>) {
        tracing::trace!(from = %from, ?seqs, "declined");
        let mut released = false;
        for seq in seqs.into_iter().take(MAX_REQUEST) {
            if self.pulls.get(&seq).is_some_and(|(peer, _)| *peer == from) {
                self.pulls.remove(&seq);
                released = true;
            }
        }
        if released {
            self.declined_until.insert(from, now + TICK);
            self.repair(now);
        }
    }

    fn on_chunk(&mut self, now: Instant, from: NodeId, hops: u8, chunk: Chunk) {
        let stripe = chunk.stripe as usize;
        if stripe >= self.k() || chunk.stripes as usize != self.k() {
            self.ban(now, from);
            return;
        }
        if let Some(p) = self.stripes[stripe].parent.as_mut().filter(|p| p.id == from) {
            p.last_chunk = Some(now);
            p.mark = Some(p.mark.map_or(chunk.seq, |m| m.max(chunk.seq)));
        }
        let len = chunk.payload.len() as u64;
        let from_parent = self.stripes[stripe].parent.is_some_and(|p| p.id == from);
        if let Some(held) = self.buffer.get(&chunk.seq) {
            self.stats.duplicate_payload_bytes += len;
            match (held.via, from_parent) {
                (Via::Pull, true) => self.stats.duplicate_tree_after_pull_bytes += len,
                (Via::Tree, false) => self.stats.duplicate_pull_after_tree_bytes += len,
                _ => {}
            }
            return;
        }
        if self.first_needed.is_some_and(|f| {
            chunk.seq < f && f >= CHANNEL_HEAD_CHUNKS && !self.group_may_precede(f, chunk.seq)
        }) {
            self.stats.duplicate_payload_bytes += len;
            return;
        }
        if !self.verifier.verify(&self.channel, &chunk) {
            self.stats.forged_chunks += 1;
            self.events.push_back(NodeEvent::ForgedChunk { from });
            self.ban(now, from);
            return;
        }
        self.stats.chunks_received += 1;
        let via = if from_parent {
            Via::Tree
        } else if self.pulls.contains_key(&chunk.seq) {
            Via::Pull
        } else {
            Via::Other
        };
        if from_parent {
            self.stats.chunks_from_parent += 1;
        }
        // The live edge of the stripe, pushed down the tree; anything else (a pull, a
        // former parent's, or an older chunk filling a gap: a fast-join group, a resume)
        // is repair, and goes on to our children as such (see below).
        let live = from_parent && self.stripes[stripe].latest.is_none_or(|l| chunk.seq > l);
        if let Some(p) = self.stripes[stripe].parent.as_mut().filter(|_| live) {
            if p.depth != hops {
                p.depth = hops;
                p.depth_since = now;
            }
        }
        self.stats.useful_payload_bytes += len;
        self.pulls.remove(&chunk.seq);
        match self.first_needed {
            None => {
                // We start at the first chunk we get (fast join sends from a keyframe)...
                self.first_needed = Some(chunk.seq);
                self.first_arrival = Some(now);
            }
            // ... or at the keyframe that comes after it, when that chunk was a live one of
            // a stripe whose parent answered first (see `group_may_precede`).
            Some(f) if chunk.keyframe && self.group_may_precede(f, chunk.seq) => {
                self.first_needed = Some(chunk.seq)
            }
            Some(_) => {}
        }
        if chunk.keyframe && self.latest_keyframe.is_none_or(|k| chunk.seq > k) {
            self.latest_keyframe = Some(chunk.seq);
        }
        let st = &mut self.stripes[stripe];
        st.latest = Some(st.latest.map_or(chunk.seq, |l| l.max(chunk.seq)));
        self.events.push_back(NodeEvent::Chunk {
            seq: chunk.seq,
            ingest_us: chunk.ingest_us,
            keyframe: chunk.keyframe,
            hops,
            from,
        });
        // Repair goes to the children behind their live chunks (Background), as our parent
        // sends it to us: pushed ahead of the live edge it delays every live chunk behind
        // it at every hop of the subtree. While thousands join at once (`rill sim`, 2,000
        // viewers over 5 s), such gap-filling made up a sixth of the trees' traffic, the
        // live chunks' queueing along a tree path went from ~110 ms to ~750 ms on the paths
        // that came in late, and ~1,000 chunks a second came in late through the trees
        // alone; as Background, none did (continuity 0.9946 -> 0.9967).
        for c in self.forwarding_order(stripe) {
            // Not to a child that starts after it (a newcomer that asked for a keyframe we
            // did not hold yet, or a resume from beyond it).
            if c == from || self.stripes[stripe].child_from.get(&c).is_some_and(|&first| chunk.seq < first) {
                continue;
            }
            let message = Message::Chunk { hops: hops.saturating_add(1), chunk: chunk.clone() };
            if live {
                self.send_chunk(now, c, message);
            } else {
                self.send_repair_chunk(now, c, message);
            }
        }
        self.store(chunk, hops, now, via);
    }

    /// Whether `seq`, below our start `first`, may still belong to the keyframe group we
    /// start with: our first chunk was no keyframe, and `seq` is within `HAVE_WINDOW` of
    /// it. A newcomer's parents answer at different times, and one that sends its live
    /// chunks at once may beat the keyframe group another sends (`rill testbed swarm
    /// --nodes 30`: 3 of 240 joins). Its start is then the group's keyframe: before,
    /// repairs never went below that live chunk, and past the channel's head the group's
    /// chunks were dropped as before our start, so the start waited for the next keyframe.
    fn group_may_precede(&self, first: u64, seq: u64) -> bool {
        seq < first
            && first - seq <= HAVE_WINDOW
            && self.buffer.get(&first).is_some_and(|h| !h.chunk.keyframe)
    }

    fn store(&mut self, chunk: Chunk, hops: u8, arrived: Instant, via: Via) {
        self.buffer.insert(chunk.seq, Held { chunk, hops, arrived, via });
        while self.buffer.len() > self.buffer_limit() {
            self.buffer.pop_first();
        }
    }

    /// Chunks kept: ten seconds of stream (a keyframe group for newcomers, and room for
    /// neighbours' repairs), at least `HAVE_WINDOW`.
    fn buffer_limit(&self) -> usize {
        let per_s = 1_000_000 / self.config.chunk_duration.as_micros().max(1) as usize;
        (10 * per_s).clamp(HAVE_WINDOW as usize, 4096)
    }

    /// A forged chunk: never trust this peer again.
    fn ban(&mut self, now: Instant, peer: NodeId) {
        if self.banned.len() >= MAX_BANNED {
            self.banned.pop_first();
        }
        self.banned.insert(peer);
        self.forget(now, peer);
        self.directory.remove(&peer);
    }

    /// Drop every relation with `peer`; find new parents where it was one.
    fn forget(&mut self, now: Instant, peer: NodeId) {
        self.mesh.remove(&peer);
        self.mesh_pending.remove(&peer);
        self.passive.remove(&peer);
        self.pulls.retain(|_, (p, _)| *p != peer);
        for s in 0..self.k() {
            let st = &mut self.stripes[s];
            st.children.remove(&peer);
            st.candidates.retain(|c| *c != peer);
            if st.pending.is_some_and(|(p, _)| p == peer) {
                st.pending = None;
            }
            if let Some(gone) = st.parent.filter(|p| p.id == peer) {
                st.parent = None;
                self.stats.reparents += 1;
                self.ask_upstream_first(now, s, &gone);
                self.find_parent(now, s);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Trees

    /// Subscribe to the next candidate in `stripe` if we have neither parent nor search.
    fn find_parent(&mut self, now: Instant, stripe: usize) {
        if self.role == Role::Publisher {
            return;
        }
        let st = &self.stripes[stripe];
        if st.parent.is_some() || st.pending.is_some() {
            return;
        }
        let interior = !st.children.is_empty();
        // A mesh neighbour that told us it has room in this stripe beats any walk.
        let leaf = !self.interior_in(stripe);
        let roomy: Vec<NodeId> = self
            .mesh
            .iter()
            .filter(|(id, m)| {
                !self.stripes[stripe].tried.contains(id)
                    && heard_lately(now, m.heard)
                    && !self.is_silent(now, id)
                    && !self.stripes[stripe].children.contains(id)
                    && if Node::home_stripe(id, self.config.stripes) == stripe {
                        m.have.spare_home > 0
                    } else {
                        leaf && m.have.spare_lend > 0
                    }
            })
            .map(|(id, _)| *id)
            .collect();
        if !roomy.is_empty() && !interior {
            let pick = roomy[self.rng.next_u32() as usize % roomy.len()];
            if let Some(m) = self.mesh.get_mut(&pick) {
                // Assume we take the slot until its next summary says otherwise.
                if Node::home_stripe(&pick, self.config.stripes) == stripe {
                    m.have.spare_home -= 1;
                } else {
                    m.have.spare_lend -= 1;
                }
            }
            self.stripes[stripe].pending = Some((pick, now));
            self.subscribe(pick, stripe);
            return;
        }
        if now < self.walk_after {
            return;
        }
        let next = loop {
            let Some(c) = self.stripes[stripe].candidates.pop_front() else { break None };
            if c != self.me.id
                && !self.banned.contains(&c)
                && !self.is_silent(now, &c)
                && !self.stripes[stripe].children.contains(&c)
            {
                break Some(c);
            }
        };
        let next = next.or_else(|| {
            // A node with children in the stripe walks down from the roots: its own
            // subtree hangs below it, detached, so a walk from a root never reaches it (no
            // cycles), and trees fill from the top, so the first node with room on the way
            // down is as shallow as a slot gets. A node without children cannot close a
            // cycle, and starts at the interior peers it knows, then the roots: when
            // thousands join at once, every walk starting at the publisher took its
            // uplink for redirects and made every chunk late for the whole join.
            self.stripes[stripe].tried.clear();
            let mut pool: Vec<NodeId> = Vec::new();
            let mut others: Vec<NodeId> = Vec::new();
            if !interior {
                // Mesh neighbours heard from lately, and passive peers (never heard from,
                // so never known to be gone).
                let mut known: Vec<PeerInfo> = self
                    .mesh
                    .iter()
                    .filter(|(_, m)| heard_lately(now, m.heard))
                    .map(|(id, _)| id)
                    .chain(self.passive.iter())
                    .filter_map(|id| self.directory.get(id).copied())
                    .filter(|i| !i.relay)
                    .collect();
                known.sort_by_key(|i| std::cmp::Reverse(i.upload_kbps));
                for i in known {
                    if self.is_interior_peer(&i, stripe) {
                        pool.push(i.id);
                    } else {
                        // Anyone else last: a viewer may lend spare slots.
                        others.push(i.id);
                    }
                }
            }
            pool.extend(self.roots.iter().copied());
            pool.extend(others);
            pool.retain(|id| *id != self.me.id && !self.banned.contains(id) && !self.is_silent(now, id));
            let st = &mut self.stripes[stripe];
            st.candidates = pool.into_iter().take(MAX_CANDIDATES).collect();
            st.candidates.pop_front()
        });
        if let Some(c) = next {
            self.stripes[stripe].pending = Some((c, now));
            self.subscribe(c, stripe);
        }
    }

    /// Roots (publisher, relays) not dropped for silence.
    fn live_roots(&self, now: Instant) -> Vec<NodeId> {
        self.roots
            .iter()
            .copied()
            .filter(|id| !self.is_silent(now, id) && !self.banned.contains(id))
            .collect()
    }

    fn note_silent(&mut self, now: Instant, id: NodeId) {
        if self.silent.len() >= MAX_SILENT && !self.silent.contains_key(&id) {
            if let Some(oldest) = self.silent.iter().min_by_key(|(_, at)| **at).map(|(id, _)| *id) {
                self.silent.remove(&oldest);
            }
        }
        self.silent.insert(id, now);
    }

    /// A parent we dropped for silence not long ago: not asked again for now, unless
    /// every root is silent (then a silent one is still better than none: it may only
    /// have been slow).
    fn is_silent(&self, now: Instant, id: &NodeId) -> bool {
        let recent = |id: &NodeId| {
            self.silent.get(id).is_some_and(|at| now.saturating_duration_since(*at) < SILENT_FOR)
        };
        recent(id) && !self.roots.iter().all(recent)
    }

    /// Ask `to` to be our parent in `stripe`: when we hold nothing of the stripe yet, from
    /// the keyframe we started at (or its newest, before we have one), else from the first
    /// of its chunks we lack.
    fn subscribe(&mut self, to: NodeId, stripe: usize) {
        let latest = self.stripes[stripe].latest;
        let from_seq = match latest {
            Some(l) => l.saturating_add(self.k() as u64),
            None => self
                .first_needed
                .filter(|f| self.buffer.get(f).is_some_and(|h| h.chunk.keyframe))
                .unwrap_or(self.keyframe_heard),
        };
        tracing::trace!(stripe, to = %to, from_seq, "subscribe");
        let message =
            Message::Subscribe { stripe: stripe as u8, starting: latest.is_none(), from_seq, info: self.me };
        self.send(to, message, Class::Control);
    }

    /// How long a subscribe may go unanswered: what answers have taken so far (see
    /// [`AnswerTimer`]), 500 ms before any came.
    fn subscribe_timeout(&self) -> Duration {
        self.answers.timeout()
    }

    /// A parent is dead or too slow when nothing came from it in its stripe for this long
    /// while the stream went on: four of its stripe's chunk intervals, and at least 300 ms
    /// (below that, scheduling jitter on a loaded host looks like silence).
    fn parent_timeout(&self) -> Duration {
        (self.config.chunk_duration * self.k() as u32 * 4).max(Duration::from_millis(300))
    }

    /// Whether `parent` of `stripe` is alive but has nothing to send: a summary of its came
    /// after its last chunk to us, recently, and names no chunk of the stripe newer than
    /// what it sent us. (A parent that holds newer chunks and does not send them is slow,
    /// and one that sends no summaries either is gone.)
    fn starving(&self, now: Instant, stripe: usize, parent: &Parent, quiet_since: Instant) -> bool {
        let k = self.k() as u64;
        parent.have.is_some_and(|(at, have)| {
            at > quiet_since
                && heard_lately(now, at)
                && !(parent.mark.map_or(0, |m| m + 1)..=have.latest)
                    .filter(|seq| seq % k == stripe as u64)
                    .any(|seq| Node::peer_has(&have, seq))
        })
    }

    fn check_parents(&mut self, now: Instant) {
        // The newest chunk we know exists: held, or advertised by a mesh neighbour. A
        // neighbour's summary matters when one parent fed every stripe (a relay): if it
        // dies, nothing newer arrives at all, and only the neighbours tell the stream
        // went on without us.
        let advertised = self.mesh.values().map(|m| m.have.latest).filter(|&l| l > 0).max();
        let newest = self.buffer.keys().next_back().copied().max(advertised);
        for s in 0..self.k() {
            if let Some((p, at)) = self.stripes[s].pending {
                if now.saturating_duration_since(at) >= self.subscribe_timeout() {
                    tracing::trace!(stripe = s, to = %p, "subscribe unanswered");
                    self.stripes[s].pending = None;
                    self.stripes[s].moving = false;
                    self.stripes[s].note_tried(p);
                }
            }
            if let Some(parent) = self.stripes[s].parent {
                // A parent cannot be late before the stream reached us at all (a viewer may
                // join before the publisher starts): count from the later of the two.
                let quiet_since = parent
                    .last_chunk
                    .unwrap_or_else(|| self.first_arrival.map_or(parent.since, |t| t.max(parent.since)));
                // The stream is flowing (newer chunks keep arriving, by tree or by pull) but
                // not from this parent.
                let stripe_behind = match (newest, parent.mark) {
                    (Some(n), Some(m)) => n >= m + 2 * self.k() as u64,
                    (Some(_), None) => true,
                    _ => false,
                };
                let quiet = now.saturating_duration_since(quiet_since);
                let patient = quiet < STARVING_PATIENCE && self.starving(now, s, &parent, quiet_since);
                if stripe_behind && quiet >= self.parent_timeout() && !patient {
                    self.note_silent(now, parent.id);
                    self.send(parent.id, Message::Unsubscribe { stripe: s as u8 }, Class::Control);
                    self.stripes[s].parent = None;
                    self.stripes[s].note_tried(parent.id);
                    self.stats.reparents += 1;
                    self.ask_upstream_first(now, s, &parent);
                }
            }
            self.find_parent(now, s);
        }
    }

    /// Our depth in `stripe`'s tree once it has held for [`DEPTH_SETTLE`] (see there).
    fn settled_depth(&self, now: Instant, stripe: usize) -> Option<u8> {
        let p = self.stripes.get(stripe)?.parent?;
        (p.depth > 0 && now.saturating_duration_since(p.depth_since) >= DEPTH_SETTLE).then_some(p.depth)
    }

    /// Tree optimisation toward fewer hops: move under a mesh neighbour that sits at least
    /// [`MOVE_MIN_GAIN`] hops higher in the stripe's tree and advertises a free slot
    /// there, and take our subtree along. A tree grows where slots happened to be free
    /// when nodes joined (a mesh neighbour's, the first on a walk), and trees fill from
    /// the top, so the slots freed later by leaving or moving nodes sit higher than many
    /// of the nodes that found none there. Each hop costs a chunk the parent's queue and
    /// a path delay (`rill sim scenarios/issue-10k.toml`: ~55 ms a hop at the median,
    /// and the deepest nodes make the p99). A node deeper in the tree than the neighbour
    /// never reads as shallower (see [`DEPTH_SETTLE`]), so a move cannot close a cycle;
    /// the old parent keeps sending until the new one accepts, and a refusal leaves
    /// everything as it was.
    fn move_up(&mut self, now: Instant) {
        if self.role != Role::Viewer {
            return;
        }
        for s in 0..self.k() {
            let st = &self.stripes[s];
            let Some(parent) = st.parent else { continue };
            if st.pending.is_some()
                || st.move_asked.is_some_and(|at| now.saturating_duration_since(at) < MOVE_RETRY)
            {
                continue;
            }
            let Some(depth) = self.settled_depth(now, s) else { continue };
            // A node that forwards the stripe to children may also take a leaf's place
            // under a full neighbour (see `on_subscribe`): the leaf goes a level down, our
            // subtree comes up, so it must come up by more.
            let forwards = self.interior_in(s) && !st.children.is_empty();
            let mut best: Vec<NodeId> = Vec::new();
            let mut best_depth = u8::MAX;
            for (id, m) in &self.mesh {
                let d = m.have.home_depth;
                let gain = |hops: u8| d > 0 && u16::from(d) + 1 + u16::from(hops) <= u16::from(depth);
                let room = (m.have.spare_home > 0 && gain(MOVE_MIN_GAIN))
                    || (forwards && m.have.home_leaves > 0 && gain(MOVE_MIN_GAIN + 1));
                if !room
                    || *id == parent.id
                    || Node::home_stripe(id, self.config.stripes) != s
                    || !heard_lately(now, m.heard)
                    || self.is_silent(now, id)
                    || st.children.contains(id)
                {
                    continue;
                }
                if d < best_depth {
                    best.clear();
                    best_depth = d;
                }
                if d == best_depth {
                    best.push(*id);
                }
            }
            if best.is_empty() {
                continue;
            }
            let pick = best[self.rng.next_u32() as usize % best.len()];
            if let Some(m) = self.mesh.get_mut(&pick) {
                // Assume we take the slot until its next summary says otherwise.
                if m.have.spare_home > 0 {
                    m.have.spare_home -= 1;
                } else {
                    m.have.home_leaves = m.have.home_leaves.saturating_sub(1);
                }
            }
            tracing::trace!(stripe = s, to = %pick, depth, to_depth = best_depth, "move up");
            let st = &mut self.stripes[s];
            st.pending = Some((pick, now));
            st.moving = true;
            st.move_asked = Some(now);
            self.subscribe(pick, s);
        }
    }

    // -----------------------------------------------------------------------------------
    // Mesh

    fn maintain_mesh(&mut self, now: Instant) {
        // HyParView's failure detector, on our own summaries: a neighbour sends one every
        // few ticks, so one that went quiet for several is gone. The transport would tell
        // only after its idle timeout (30 s), and meanwhile a dead neighbour holds a mesh
        // slot, its stale summary attracts pulls, and it is picked as a parent again
        // (`rill sim`, 10,000 viewers, 30 % leaving at once: continuity stuck near 0.7).
        let quiet: Vec<NodeId> = self
            .mesh
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.heard) >= MESH_SILENCE)
            .map(|(id, _)| *id)
            .collect();
        for id in quiet {
            self.note_silent(now, id);
            self.forget(now, id);
        }
        self.mesh_pending.retain(|_, at| now.saturating_duration_since(*at) < Duration::from_secs(2));
        let want = self.config.mesh_size.saturating_sub(self.mesh.len() + self.mesh_pending.len());
        if want == 0 || self.passive.is_empty() {
            return;
        }
        let pool: Vec<NodeId> =
            self.passive.iter().copied().filter(|id| !self.mesh_pending.contains_key(id)).collect();
        for _ in 0..want.min(2) {
            if pool.is_empty() {
                break;
            }
            let id = pool[self.rng.next_u32() as usize % pool.len()];
            if !self.mesh_pending.contains_key(&id) {
                self.say_hello(now, id);
            }
        }
    }

    /// Free slots we advertise to mesh neighbours, so a searching node can go straight to
    /// a parent with room instead of walking down full trees: (home stripe, lendable).
    fn spare_slots(&self) -> (u8, u8) {
        if self.role != Role::Viewer {
            return (0, 0);
        }
        let home = Node::home_stripe(&self.me.id, self.config.stripes);
        if self.stripes[home].parent.is_none() {
            // Detached from the home stripe's tree: a child would get nothing, and a
            // searcher from our own subtree would close a cycle.
            return (0, 0);
        }
        let used: usize = self.stripes.iter().map(|s| s.children.len()).sum();
        let free_home = self.child_capacity(home).saturating_sub(self.stripes[home].children.len());
        let lend = self.tree_slots().saturating_sub(used + 1);
        (free_home.min(u8::MAX as usize) as u8, lend.min(u8::MAX as usize) as u8)
    }

    fn have(&self, now: Instant) -> Have {
        let (spare_home, spare_lend) = self.spare_slots();
        let home = Node::home_stripe(&self.me.id, self.config.stripes);
        let home_depth = self.settled_depth(now, home).unwrap_or(0);
        // Only a viewer's: a root takes no mover (it advertises no depth either).
        let leaves = match self.role {
            Role::Viewer => self.stripes[home]
                .children
                .iter()
                .filter(|c| !self.is_interior_peer(&self.info_of(**c), home))
                .count(),
            Role::Publisher | Role::Relay => 0,
        };
        let home_leaves = leaves.min(u8::MAX as usize) as u8;
        let Some(&latest) = self.buffer.keys().next_back() else {
            return Have { spare_home, spare_lend, home_depth, home_leaves, ..Have::default() };
        };
        let mut recent = 0u64;
        for (&seq, _) in self.buffer.range(latest.saturating_sub(HAVE_WINDOW)..latest) {
            let i = latest - 1 - seq;
            if i < 64 {
                recent |= 1 << i;
            }
        }
        Have { latest, recent, spare_home, spare_lend, home_depth, home_leaves }
    }

    fn peer_has(have: &Have, seq: u64) -> bool {
        if seq == have.latest {
            return have.latest > 0 || have.recent != 0;
        }
        seq < have.latest && have.latest - 1 - seq < 64 && have.recent & (1 << (have.latest - 1 - seq)) != 0
    }

    /// Pull what the trees did not bring, when it is late on the tree's own cadence: a
    /// stripe delivers one chunk every `K × chunk_duration`, so chunk `m` is expected about
    /// one stripe period after chunk `m - K` arrived, and `n` periods after the stripe's
    /// newest chunk `m - nK` we hold when the chunks between are not here either.
    /// Comparing a stripe with itself, not with other stripes or with the neighbours,
    /// matters: stripes travel different trees, and neighbours sit at other depths of the
    /// same tree, whose lags differ by hundreds of milliseconds under load; pulling on that
    /// difference only buys duplicates (and the congestion they cause).
    fn repair(&mut self, now: Instant) {
        let Some(first) = self.first_needed else { return };
        let Some(&newest_held) = self.buffer.keys().next_back() else { return };
        let k = self.k() as u64;
        let period = self.config.chunk_duration * k as u32;
        let slack = period + Duration::from_millis(100);
        let pull_timeout = Duration::from_millis(400);
        self.pulls.retain(|_, (_, at)| now.saturating_duration_since(*at) < pull_timeout);
        self.declined_until.retain(|_, until| now < *until);
        let neighbours: Vec<(NodeId, Have)> = self.mesh.iter().map(|(id, m)| (*id, m.have)).collect();
        if neighbours.is_empty() {
            return;
        }
        // Neighbours may know of newer chunks than we hold (all our parents may be gone).
        let newest = neighbours.iter().map(|(_, h)| h.latest).max().unwrap_or(0).max(newest_held);
        // A node whose first chunk was among the channel's first K may have been there
        // when the channel began, and then outputs its beginning (see
        // `CHANNEL_HEAD_CHUNKS`): the chunks before its first are wanted too. A stripe
        // whose first parent was replaced just then (a forger banned, say) never got its
        // first chunk down the tree. A newcomer in the channel's first second, sent a
        // group from keyframe 1, pulls chunk 0 as well; its player starts at the keyframe
        // and counts it before its start (see the viewer's `PRESENT_AT_START_WITHIN`).
        let first = if first < k { 0 } else { first };
        let from = first.max(newest.saturating_sub(HAVE_WINDOW));
        // Our start span (see `START_SPAN`): from our first chunk up to the first chunk
        // held that was ingested `START_SPAN` after it, or `START_BACKLOG_AGE` before the
        // newest chunk held if that is later (within `START_BACKLOG_MAX` of the first);
        // while none is held, everything newer we know of. Empty until the first chunk
        // itself is held (a node from the channel's head, whose start is moved to seq 0
        // above, until chunk 0 comes).
        let start_span_end = self.buffer.get(&first).map_or(first, |f| {
            let until = f.chunk.ingest_us.saturating_add(START_SPAN.as_micros() as u64);
            let newest_ingest = self.buffer.get(&newest_held).map_or(0, |h| h.chunk.ingest_us);
            let backlog = newest_ingest
                .saturating_sub(START_BACKLOG_AGE.as_micros() as u64)
                .min(f.chunk.ingest_us.saturating_add(START_BACKLOG_MAX.as_micros() as u64));
            let until = until.max(backlog);
            let end = self.buffer.range(first..).find(|(_, h)| h.chunk.ingest_us >= until);
            end.map_or(newest + 1, |(seq, _)| seq + 1)
        });
        let start_span_due = self.first_arrival.map_or(now, |t| t + START_SPAN_WAIT);
        let mut by_peer: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        // The newest chunk of each stripe held in [from, seq), as `seq` goes up.
        let mut stripe_newest: Vec<Option<(u64, Instant)>> = vec![None; k as usize];
        // The held chunks of the window, walked beside `seq` (one ordered pass, not a
        // lookup per seq: this runs every tick at every node, and most of the window is
        // held). Its head is the first chunk held after `seq`.
        let mut held = self.buffer.range(from..=newest).peekable();
        for seq in from..=newest {
            if let Some((_, h)) = held.next_if(|(s, _)| **s == seq) {
                stripe_newest[(seq % k) as usize] = Some((seq, h.arrived));
                continue;
            }
            if self.pulls.contains_key(&seq) {
                continue;
            }
            if self.pulls.len() >= MAX_PENDING_PULLS {
                break;
            }
            // Below where our parent's group or resume began (a newcomer's parents may
            // start their groups at different keyframes): the tree will not bring it.
            let unsent = self.stripes[(seq % k) as usize].parent.is_some_and(|p| seq < p.sends_from);
            let due = match seq.checked_sub(k).and_then(|prev| self.buffer.get(&prev)) {
                _ if unsent => now,
                Some(prev) => prev.arrived + period + slack,
                // The stripe's previous chunk is missing too, with newer chunks here (a
                // gap): late by the same measure.
                None => match held.peek() {
                    Some((_, later)) => later.arrived + slack,
                    // Newer than all we hold, known only from the neighbours' summaries:
                    // due on the stripe's cadence, or once a neighbour has named it for
                    // `AHEAD_PULL_AFTER`, whichever comes first.
                    None => match stripe_newest[(seq % k) as usize] {
                        Some((held, at)) => {
                            let cadence = at + period * ((seq - held) / k) as u32 + slack;
                            match self.first_named.iter().find(|(latest, _)| *latest >= seq) {
                                Some((_, named)) => cadence.min(*named + AHEAD_PULL_AFTER),
                                None => cadence,
                            }
                        }
                        // Nothing of the stripe in the window: it has no tree to wait for.
                        None => now,
                    },
                },
            };
            let due = if seq < start_span_end { due.min(start_span_due) } else { due };
            if now < due {
                continue;
            }
            // Not from a parent we dropped for silence: its last summary may still list
            // chunks, but a dead node never answers, and each such pull costs a timeout.
            let holders: Vec<NodeId> = neighbours
                .iter()
                .filter(|(id, h)| Node::peer_has(h, seq) && !self.is_silent(now, id))
                .map(|(id, _)| *id)
                .collect();
            // No neighbour has it, and we have few neighbours (a newcomer whose mesh is
            // still forming): ask a root, which holds every chunk. Only then: at scale,
            // every orphan pulling from the roots would take the upload the trees need.
            let mut holders = if holders.is_empty() && self.mesh.len() < self.config.mesh_size / 2 {
                self.live_roots(now)
            } else {
                holders
            };
            // Not from one that just declined: it would decline again this tick.
            holders.retain(|id| !self.declined_until.contains_key(id));
            if holders.is_empty() {
                continue;
            }
            // Prefer a holder that advertises free child slots: its children leave upload
            // unused, which is what it serves pulls from (`serve_budget_per_tick`); a
            // full one serves them behind its children's live chunks, or declines.
            let has_free_slots = |id: &NodeId| self.mesh.get(id).is_some_and(|m| m.have.has_free_slots());
            if holders.iter().any(has_free_slots) {
                holders.retain(has_free_slots);
            }
            let peer = holders[self.rng.next_u32() as usize % holders.len()];
            let list = by_peer.entry(peer).or_default();
            if list.len() < MAX_REQUEST {
                list.push(seq);
                self.pulls.insert(seq, (peer, now));
            }
        }
        for (peer, seqs) in by_peer {
            tracing::trace!(to = %peer, ?seqs, "pull");
            self.stats.pulls_sent += seqs.len() as u64;
            self.send(peer, Message::Request { seqs }, Class::Stream);
        }
    }

    // -----------------------------------------------------------------------------------
    // Time

    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.ticks = self.ticks.wrapping_add(1);
        for m in self.mesh.values_mut() {
            m.served = 0;
        }
        self.served_bytes_tick = 0;
        if self.role != Role::Publisher {
            let orphans = self.stripes.iter().filter(|s| s.parent.is_none()).count() as u64;
            self.stats.orphan_ms += orphans * TICK.as_millis() as u64;
        }
        self.check_parents(now);
        self.move_up(now);
        self.check_children(now);
        self.maintain_mesh(now);
        self.repair(now);
        if self.ticks % HAVE_EVERY_TICKS == 0 {
            // To mesh neighbours, who pull by them, to parents, who take them as a sign of
            // life (see `check_children`), and to children, who tell by them a parent that
            // lost its own feed from a dead one (see `STARVING_PATIENCE`).
            let have = self.have(now);
            let mut to: BTreeSet<NodeId> = self.mesh.keys().copied().collect();
            to.extend(self.stripes.iter().filter_map(|s| s.parent.map(|p| p.id)));
            to.extend(self.stripes.iter().flat_map(|s| s.children.iter().copied()));
            for id in to {
                self.send(id, Message::Have(have), Class::Control);
            }
        }
    }

    /// Drop children we have not heard from for [`CHILD_SILENCE`] (crashed, or gone
    /// without a word): their slots go to the orphans looking for one.
    fn check_children(&mut self, now: Instant) {
        let stripes = &self.stripes;
        self.children_heard.retain(|c, _| stripes.iter().any(|s| s.children.contains(c)));
        let silent: Vec<NodeId> = self
            .children_heard
            .iter()
            .filter(|(_, &heard)| now.saturating_duration_since(heard) >= CHILD_SILENCE)
            .map(|(c, _)| *c)
            .collect();
        for c in silent {
            self.children_heard.remove(&c);
            for st in &mut self.stripes {
                st.children.remove(&c);
            }
            self.stats.children_dropped_silent += 1;
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Leave gracefully: tell neighbours, children and parents.
    pub fn leave(&mut self, _now: Instant) {
        let mut told = BTreeSet::new();
        for id in self.mesh.keys().copied().collect::<Vec<_>>() {
            told.insert(id);
        }
        for st in &self.stripes {
            told.extend(st.children.iter().copied());
            told.extend(st.parent.map(|p| p.id));
        }
        for id in told {
            self.send(id, Message::Leave, Class::Control);
        }
    }

    pub fn stats(&self) -> NodeStats {
        self.stats.clone()
    }

    /// When the node first had a parent in every stripe: a newcomer's tree search is over,
    /// and what its start still waits for is its parents' sending (its keyframe group
    /// behind their live chunks). `None` until then, and always for the publisher.
    pub fn tree_joined_at(&self) -> Option<Instant> {
        self.tree_joined_at
    }

    /// Each stripe's parent, if any (for tests and diagnostics).
    pub fn parents(&self) -> Vec<Option<NodeId>> {
        self.stripes.iter().map(|s| s.parent.map(|p| p.id)).collect()
    }

    /// Children per stripe (for tests and diagnostics).
    pub fn children(&self, stripe: usize) -> Vec<NodeId> {
        self.stripes.get(stripe).map_or(Vec::new(), |s| s.children.iter().copied().collect())
    }

    /// One line about a stripe's search state (diagnostics).
    pub fn stripe_state(&self, stripe: usize) -> String {
        self.stripes.get(stripe).map_or(String::new(), |st| {
            format!(
                "parent {:?} pending {:?} candidates {} tried {} children {} cap {} lends {}",
                st.parent.map(|p| p.id),
                st.pending.map(|p| p.0),
                st.candidates.len(),
                st.tried.len(),
                st.children.len(),
                self.child_capacity(stripe),
                self.tree_slots()
            )
        })
    }

    pub fn mesh_peers(&self) -> Vec<NodeId> {
        self.mesh.keys().copied().collect()
    }

    /// A verified chunk we hold (the payload a viewer plays after `NodeEvent::Chunk`).
    pub fn chunk(&self, seq: u64) -> Option<&Chunk> {
        self.buffer.get(&seq).map(|held| &held.chunk)
    }

    pub fn holds(&self, seq: u64) -> bool {
        self.buffer.contains_key(&seq)
    }

    /// State sizes, to check that everything stays bounded.
    pub fn state_sizes(&self) -> StateSizes {
        StateSizes {
            directory: self.directory.len(),
            passive: self.passive.len(),
            mesh: self.mesh.len(),
            banned: self.banned.len(),
            buffer: self.buffer.len(),
            pulls: self.pulls.len(),
            transmits: self.transmits.len(),
            transmits_dropped: self.transmits_dropped,
            children: self.stripes.iter().map(|s| s.children.len()).sum(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSizes {
    pub directory: usize,
    pub passive: usize,
    pub mesh: usize,
    pub banned: usize,
    pub buffer: usize,
    pub pulls: usize,
    pub transmits: usize,
    pub transmits_dropped: u64,
    pub children: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_timeout_follows_the_answers_measured() {
        let mut t = AnswerTimer::default();
        // Nothing measured: the fixed bound.
        assert_eq!(t.timeout(), AnswerTimer::MAX);
        // Answers in 40–60 ms: given up after what they take plus their variation, not
        // below the floor.
        for ms in [40, 60, 50, 45, 55, 50, 40, 60] {
            t.sample(Duration::from_millis(ms));
        }
        let steady = t.timeout();
        assert!(steady >= AnswerTimer::MIN && steady <= Duration::from_millis(200), "{steady:?}");
        // Answers slow down (a busy parent, a long path): the timeout grows with them, up
        // to the bound.
        for _ in 0..20 {
            t.sample(Duration::from_millis(400));
        }
        assert_eq!(t.timeout(), AnswerTimer::MAX);
        for _ in 0..40 {
            t.sample(Duration::from_millis(100));
        }
        let back = t.timeout();
        assert!(back < AnswerTimer::MAX && back >= Duration::from_millis(100), "{back:?}");
    }
}
