//! The playout buffer: verified chunks in, the stream in sequence order out, each chunk at
//! its playout deadline. Sans-IO: the caller passes the time in and asks when to call again.
//!
//! # Call order
//! Whenever a verified chunk arrives, [`PlayoutBuffer::insert`] it. Then call
//! [`PlayoutBuffer::poll_output`] until it returns `None`, writing out what it returns, and
//! sleep until [`PlayoutBuffer::poll_timeout`] (or the next arrival), then poll again. All
//! times are µs on the clock of the publisher's `ingest_us` (UNIX time on NTP-synced hosts).
//! Time should only move forward; if it steps back nothing breaks, output just waits.
//!
//! # Rules, and why
//! - **Start at a keyframe.** Output begins with the first keyframe chunk received: a
//!   decoder can do nothing with the frames before it. Chunks before it are dropped and
//!   counted in `chunks_before_start`, not as lost: they were before our start. One
//!   exception: a viewer present from the start (it began watching before the channel's
//!   first chunk was ingested, give or take [`PRESENT_AT_START_WITHIN`]) that holds the
//!   channel's very first chunks (seq 0 up to the keyframe) when output begins starts at
//!   seq 0, where the publisher's input itself started (an encoder's first bytes, e.g.
//!   ffmpeg's SDT, may precede its first PAT and keyframe); so it outputs the input
//!   exactly. A newcomer in the channel's first second may hold those chunks too (its
//!   swarm pulls them), but its group is still on the way: it starts at its keyframe,
//!   under the start margin below.
//! - **Deadline.** A chunk is due at `ingest_us + latency` (less the clock skew, below).
//!   Waiting for the deadline rather than sending chunks as they come absorbs the jitter and
//!   reordering of the swarm, so the output leaves at the pace it was ingested.
//! - **Start margin.** A newcomer mid-stream starts at the latest keyframe, which may be
//!   nearly a keyframe interval old and due at once, while the rest of its group is still
//!   on the way (fast join sends it behind the live chunks): output at the plain deadlines
//!   would give those chunks up. So the first output waits, as a player's initial
//!   buffering does, until the chunks held from the keyframe on, without a gap, last
//!   until `start_margin` from now, for at most `start_margin`; every deadline then moves
//!   later by the wait, for the rest of the session. A newcomer whose group came in time (or a viewer present
//!   from the start) is not shifted; one whose group came late plays up to `start_margin`
//!   behind its target lag instead of losing its first chunks. If the margin runs out with
//!   a gap about to fall due and a later keyframe is held beyond it, output starts at that
//!   keyframe instead (`start_restarts`), with a margin of its own: nothing was output yet,
//!   so nothing is lost, where starting with the gap would give up chunks in the first
//!   second and show broken pictures until the next keyframe anyway.
//! - **Startup budget.** A newcomer whose start keyframe is young would wait nearly the
//!   whole latency for its first byte (a keyframe ingested just before it joined is due a
//!   latency later). So once `startup_budget` has passed since the buffer's first use (a
//!   viewer makes the buffer when watching begins) and the chunks held from the start
//!   keyframe on, without a gap, span `start_margin` of stream, output begins at once: the
//!   whole schedule runs `ahead` of `ingest + latency` by what was left of the wait. Only a
//!   start that could meet the budget goes early (keyframe ingested at least `start_margin`
//!   before the budget ends): a viewer that waited for the channel to begin has nothing to
//!   shorten, and keeps its target lag. A start that moved to a later keyframe
//!   (`start_restarts`) has missed the budget already, and goes as soon as its span is
//!   held. Running ahead spends jitter room, so it is given back whenever the swarm needs
//!   it: a hole is still waited for until the chunk after it is due at the target lag (not
//!   given up at the schedule's earlier time), and a chunk output late moves the rest of
//!   the schedule later by as much. The output pauses then (counted as stalled time) but
//!   loses nothing the target lag would have kept; the lag only grows back toward the
//!   target, never shrinks again. The lead is at most half the latency: a viewer that asked
//!   for a deep buffer (a bad network, say) keeps at least half of it from the start.
//! - **Order, exactly once.** Output is in strictly increasing seq order. A missing seq (a
//!   hole) is waited for until the next chunk held after it is due; then the hole is given
//!   up, counted in `lost_chunks` and skipped. Chunks hold whole MPEG-TS packets, so
//!   skipping chunks skips whole packets and the decoder resynchronises at once. A chunk
//!   that arrives after its seq was output or given up is dropped and counted
//!   (`duplicate_chunks` or `late_chunks`).
//! - **Catch-up.** When the oldest chunk due is more than `max_behind` past its deadline
//!   (the output stalled, or the start was far behind), the buffer skips to the newest held
//!   keyframe whose deadline is within `max_behind`, or, if none is held but newer data is
//!   arriving on time, waits for the next keyframe. Skipped seqs count as lost and in
//!   `skipped_for_catch_up`. Without this a stall would add to the lag for the rest of the
//!   session. If even the newest data held is more than `max_behind` late (the swarm
//!   delivers it that late), skipping would gain nothing, so output continues in order.
//! - **Bounded.** At most `max_buffered_chunks` chunks are held; at the bound the lowest seq
//!   is evicted (`chunks_dropped_full`): it is the one a catch-up would skip first, and
//!   keeping the newest keeps the live edge. The keyframe that output starts or resumes at
//!   is never evicted. The bound is for memory, not a tuning knob: it should hold
//!   `latency + max_behind` of chunks with room to spare (the default, 4096, holds over a
//!   minute of 25 ms chunks); a smaller one evicts chunks before they are due.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::histogram::LagHistogram;

/// How late after its deadline a chunk may leave and still count as on time in the
/// continuity index, and not as a stall: 20 ms. The driver wakes at `poll_timeout`, but
/// timers (tokio's have 1 ms granularity) and scheduling make it a little late; the player's
/// own input buffer hides far more than this.
pub const ON_TIME_SLACK_US: u64 = 20_000;

/// While the first output waits for its keyframe group (start margin), it looks again
/// this often if nothing arrives: 10 ms, under half a chunk.
const START_WAIT_STEP_US: u64 = 10_000;

/// When the start margin runs out with a gap in the keyframe group, output moves to a
/// later keyframe only if the chunks held before the gap run out within this: 100 ms, four
/// 25 ms chunks. A gap further off is often filled by then (its chunk is on the way), and
/// moving costs a keyframe interval of startup.
const RESTART_IF_GAP_DUE_WITHIN_US: u64 = 100_000;

/// Chunks kept below the first keyframe in case they are the channel's beginning: the
/// few chunks an encoder writes before its first keyframe. The swarm's head, which a node
/// starting within it takes in even when those chunks come after its keyframe.
const MAX_STREAM_HEAD_CHUNKS: u64 = rill_swarm::node::CHANNEL_HEAD_CHUNKS;

/// How many seqs below the next one to output remember whether they were output or given
/// up, to tell a duplicate from a late chunk: 4096 (512 bytes). Older seqs are counted late.
const OUTCOME_WINDOW: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Target playout lag: a chunk leaves at its ingest time plus this. Default 1 s.
    pub latency: Duration,
    /// Bound on chunks held. Default 4096 (over a minute of 25 ms chunks). At least 1.
    pub max_buffered_chunks: usize,
    /// How far past its deadline output may run before the buffer skips to a newer
    /// keyframe. Default 2 s.
    pub max_behind: Duration,
    /// How long the first output may wait for missing chunks of its keyframe group, and
    /// so the most the schedule is shifted (see "Start margin" in the module docs).
    /// Default [`DEFAULT_START_MARGIN`].
    pub start_margin: Duration,
    /// How long after the buffer's first use the first output should begin, when the
    /// start allows (see "Startup budget" in the module docs); None: always at the target
    /// lag. Default [`DEFAULT_STARTUP_BUDGET`].
    pub startup_budget: Option<Duration>,
}

/// Default start margin: 400 ms. In `rill testbed swarm --nodes 30` (10–50 ms paths,
/// uploads 1.5–5× the stream) the viewers that lost chunks at their start were the ones
/// whose start keyframe was due less than about 250 ms after it arrived; those with 300 ms
/// or more lost none there (a newcomer's first parents send the rest of the keyframe group
/// behind the live chunks, and it pulls what they do not). It is the swarm's `START_SPAN`,
/// the span whose missing chunks a newcomer pulls early: one value for both.
pub const DEFAULT_START_MARGIN: Duration = rill_swarm::node::START_SPAN;
/// A viewer that began watching at most this long after the channel's first chunk was
/// ingested counts as present from the start (see "Start at a keyframe"): the driver's
/// first call may follow the first arrivals by a few milliseconds, and this little of the
/// channel is what a group would carry. A viewer that began later (hundreds of
/// milliseconds, in `rill testbed swarm`'s flash crowd) and output from seq 0 without the
/// start margin gave up the group's chunks still on the way: `rill testbed swarm --nodes
/// 30 --duration 8 --runs 8 --seed 1`, 137 and 147 `lost_chunks` (`late_chunks`, all at
/// viewers that joined in the channel's first second), against 1 and 8 before they pulled
/// the channel's first chunk.
pub const PRESENT_AT_START_WITHIN: Duration = Duration::from_millis(100);

/// Default startup budget: 800 ms, for a first byte within 1 s of `rill watch` starting.
/// Past the budget the early start still waits until `start_margin` of stream from the
/// keyframe is held, up to one arrival lag more where the keyframe is youngest. In
/// `rill testbed swarm --nodes 30 --duration 30 --churn`, viewers that joined the running
/// channel had their first byte 341–1030 ms after starting.
pub const DEFAULT_STARTUP_BUDGET: Duration = Duration::from_millis(800);

impl Default for PlayoutConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_secs(1),
            max_buffered_chunks: 4096,
            max_behind: Duration::from_secs(2),
            start_margin: DEFAULT_START_MARGIN,
            startup_budget: Some(DEFAULT_STARTUP_BUDGET),
        }
    }
}

/// A verified chunk, as the playout buffer needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct PlayoutChunk {
    pub seq: u64,
    /// Publisher's clock when it ingested the chunk's last byte, µs.
    pub ingest_us: u64,
    /// The payload starts with a keyframe.
    pub keyframe: bool,
    /// Whole MPEG-TS packets.
    pub payload: Bytes,
}

impl std::fmt::Debug for PlayoutChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayoutChunk")
            .field("seq", &self.seq)
            .field("ingest_us", &self.ingest_us)
            .field("keyframe", &self.keyframe)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// A chunk in the buffer, with when it arrived (to tell why a chunk left late).
#[derive(Debug)]
struct Held {
    chunk: PlayoutChunk,
    arrived_us: u64,
}

impl std::ops::Deref for Held {
    type Target = PlayoutChunk;
    fn deref(&self) -> &PlayoutChunk {
        &self.chunk
    }
}

impl From<rill_swarm::chunk::Chunk> for PlayoutChunk {
    fn from(chunk: rill_swarm::chunk::Chunk) -> Self {
        Self { seq: chunk.seq, ingest_us: chunk.ingest_us, keyframe: chunk.keyframe, payload: chunk.payload }
    }
}

/// Counters of a [`PlayoutBuffer`] (names as in shared/METRICS.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// Chunks output.
    pub chunks_out: u64,
    /// Payload bytes output.
    pub bytes_out: u64,
    /// Seqs after the start that were never output: holes given up, seqs skipped to catch
    /// up, chunks evicted at the bound and then given up. Each seq counts once.
    pub lost_chunks: u64,
    /// Chunks that arrived after their seq had been given up (or too long ago to tell).
    pub late_chunks: u64,
    /// Chunks that arrived while held or after being output.
    pub duplicate_chunks: u64,
    /// Of `lost_chunks`, the seqs skipped by catch-up.
    pub skipped_for_catch_up: u64,
    /// Chunks evicted (or refused) because `max_buffered_chunks` were held.
    pub chunks_dropped_full: u64,
    /// Chunks dropped because their seq is before the keyframe output started at.
    pub chunks_before_start: u64,
    /// `now_us` of the first output (startup delay is this minus when watching began).
    pub first_output_us: Option<u64>,
    pub buffered_chunks: usize,
    /// Ingest time of the newest held chunk minus the oldest, µs.
    pub buffered_us: u64,
    /// Playout lag of the last chunk output, µs.
    pub last_playout_lag_us: Option<u64>,
    /// Playout lag of every chunk output, µs.
    pub playout_lag: LagHistogram,
    /// Time after startup during which a chunk was due and not yet output, µs: the
    /// stalled time of METRICS.md as this viewer sees it. Counted when the stall ends.
    pub stalled_us: u64,
    /// How far our clock is known to be behind the publisher's, µs (see `PlayoutBuffer`).
    pub skew_us: u64,
    /// How much later than `ingest + latency` chunks are due, µs: the start margin's shift.
    pub start_shift_us: u64,
    /// How far ahead of `ingest + latency` (and the start shift) output runs now, µs: an
    /// early start's lead, less what the swarm took back since (see "Startup budget").
    pub ahead_us: u64,
    /// The lead the early start began with, µs (0: output began at the target lag).
    pub start_ahead_us: u64,
    /// Times the first output moved to a later keyframe because the margin ran out with
    /// the start keyframe's group incomplete.
    pub start_restarts: u64,
    /// Chunks output after startup (deadline after the first output), and of those, the
    /// ones output by their deadline plus [`ON_TIME_SLACK_US`].
    pub chunks_due_after_startup: u64,
    pub chunks_on_time: u64,
    /// Of `lost_chunks`, those lost after startup.
    pub lost_after_startup: u64,
    /// The chunks output after startup but not on time, by why they left late (the two
    /// add up to `chunks_due_after_startup - chunks_on_time`): the chunk arrived after its
    /// deadline plus [`ON_TIME_SLACK_US`] (the swarm was late) ...
    pub late_out_arrived_late: u64,
    /// ... or it was held by then: output was polled late (this process was busy, or its
    /// timer woke late), or, after a stall past `max_behind`, catch-up held it while
    /// waiting for a keyframe. Polled in time and outside catch-up, a chunk held by its
    /// deadline leaves on time, as a hole before it is given up at that deadline.
    pub late_out_held_in_time: u64,
}

impl PlayoutStats {
    /// Continuity index (METRICS.md): chunks output on time (by deadline +
    /// [`ON_TIME_SLACK_US`]) over chunks output plus chunks lost, after startup. Startup is
    /// the backlog that was already due when output began (fast join hands a viewer the
    /// current keyframe group, which is due at once): it is late by construction and is
    /// what startup delay measures. None until a chunk after startup was output or lost.
    pub fn continuity_index(&self) -> Option<f64> {
        let total = self.chunks_due_after_startup + self.lost_after_startup;
        (total > 0).then(|| self.chunks_on_time as f64 / total as f64)
    }
}

/// See the module documentation for the rules.
///
/// # Clock skew
/// No chunk is ingested after it arrives, so a chunk that arrives with
/// `now_us < ingest_us` proves our clock is behind the publisher's by at least
/// `ingest_us - now_us`. The buffer keeps the largest such difference, `skew_us`, and reads
/// the publisher's clock as `now_us + skew_us`: deadlines in our clock are
/// `ingest_us + latency - skew_us`, and playout lag is `now_us + skew_us - ingest_us`.
/// Without this, a viewer whose clock is behind by S would hold every chunk S too long
/// (lag `latency + S`). With it the residual error is at most the one-way delay of the
/// chunk that set the skew, and never makes output early. (A clock ahead of the publisher's
/// cannot be told apart from network delay; on one machine or NTP-synced hosts it is small.)
#[derive(Debug)]
pub struct PlayoutBuffer {
    latency_us: u64,
    max_behind_us: u64,
    /// ≥ 1.
    max_buffered_chunks: usize,
    /// Chunks held, by seq. Bound: `max_buffered_chunks`. After the start every key is
    /// ≥ `next_seq`.
    held: BTreeMap<u64, Held>,
    /// Until the first output: chunks below the start keyframe, kept in case they turn out
    /// to be the whole beginning of the channel (seq 0 onward). At most
    /// [`MAX_STREAM_HEAD_CHUNKS`]; emptied at the first output.
    stream_head: BTreeMap<u64, Held>,
    /// Before the first keyframe: None. Then the seq of the next chunk to output.
    next_seq: Option<u64>,
    /// The seq output started at (meaningful once `next_seq` is set).
    start_seq: u64,
    skew_us: u64,
    start_margin_us: u64,
    /// How much later than `ingest + latency` every deadline is: the start margin's wait,
    /// fixed at the first output.
    start_shift_us: u64,
    startup_budget_us: Option<u64>,
    /// Set at the first `insert` or `poll_output`: when the startup budget ends.
    start_by_us: Option<u64>,
    /// Whether `insert` or `poll_output` was called yet.
    begun: bool,
    /// `now_us` of that first call.
    began_us: u64,
    /// `now_us` of the latest `poll_output` (so `poll_timeout` never names a time that
    /// was already looked at).
    last_poll_us: u64,
    /// How far ahead of its deadline (`deadline_us`) each chunk is output: the early
    /// start's lead, shrunk by every late output. Deadlines stay where the target lag puts
    /// them; they decide what is on time, given up or caught up.
    ahead_us: u64,
    /// For seqs in `[next_seq - OUTCOME_WINDOW, next_seq)`: bit `seq % OUTCOME_WINDOW` is set
    /// if the seq was output, clear if it was given up.
    output_bits: [u64; (OUTCOME_WINDOW / 64) as usize],
    /// Set by `poll_output` while catch-up waits for a keyframe to arrive: when to look
    /// again if none does. Any insert clears it so the new chunk is considered.
    awaiting_keyframe_until_us: Option<u64>,
    /// Set when catch-up found nothing fresher to skip to. Until the next insert that stays
    /// true (time only makes chunks staler), so polls skip the O(held) search.
    in_order_until_insert: bool,
    /// Stalled time is counted up to here (stall intervals may overlap; each µs once).
    stall_counted_until_us: u64,
    stats: PlayoutStats,
}

/// What the first output does about its keyframe group (`wait_for_start_group`).
enum StartGroup {
    /// Output starts now.
    Go,
    /// Wait: the deadlines moved later.
    Wait,
    /// Start at this later keyframe instead.
    RestartAt(u64),
}

/// What catch-up decides when the oldest due chunk is more than `max_behind` late.
enum CatchUp {
    /// Skip to this keyframe seq.
    SkipTo(u64),
    /// Nothing fresh enough to skip to yet, but fresh data is arriving: output nothing and
    /// look again at this time (when the newest chunk held goes stale).
    AwaitKeyframe { until_us: u64 },
    /// Everything held is late; skipping would not get closer to live.
    PlayInOrder,
}

impl PlayoutBuffer {
    pub fn new(config: PlayoutConfig) -> Self {
        Self {
            latency_us: duration_us(config.latency),
            max_behind_us: duration_us(config.max_behind),
            max_buffered_chunks: config.max_buffered_chunks.max(1),
            held: BTreeMap::new(),
            stream_head: BTreeMap::new(),
            next_seq: None,
            start_seq: 0,
            skew_us: 0,
            start_margin_us: duration_us(config.start_margin),
            start_shift_us: 0,
            startup_budget_us: config.startup_budget.map(duration_us),
            start_by_us: None,
            begun: false,
            began_us: 0,
            last_poll_us: 0,
            ahead_us: 0,
            output_bits: [0; (OUTCOME_WINDOW / 64) as usize],
            awaiting_keyframe_until_us: None,
            in_order_until_insert: false,
            stall_counted_until_us: 0,
            stats: PlayoutStats::default(),
        }
    }

    /// A verified chunk arrived at `now_us`.
    pub fn insert(&mut self, now_us: u64, chunk: PlayoutChunk) {
        self.begin(now_us);
        self.skew_us = self.skew_us.max(chunk.ingest_us.saturating_sub(now_us));
        self.awaiting_keyframe_until_us = None;
        self.in_order_until_insert = false;
        // seq u64::MAX would need 2^64 chunks before it; refusing it keeps `seq + 1`
        // (the next seq to output) from overflowing.
        if chunk.seq == u64::MAX {
            self.stats.late_chunks += 1;
            return;
        }
        let chunk = Held { chunk, arrived_us: now_us };
        match self.next_seq {
            None if chunk.keyframe => self.start_at(chunk.seq),
            None => {}
            Some(_) if chunk.seq < self.start_seq => {
                if self.stats.chunks_out == 0 {
                    self.keep_stream_head(chunk.seq, chunk);
                } else {
                    self.stats.chunks_before_start += 1;
                }
                return;
            }
            Some(next_seq) if chunk.seq < next_seq => {
                if next_seq - chunk.seq <= OUTCOME_WINDOW && self.was_output(chunk.seq) {
                    self.stats.duplicate_chunks += 1;
                } else {
                    self.stats.late_chunks += 1;
                }
                return;
            }
            Some(_) => {}
        }
        if self.held.contains_key(&chunk.seq) {
            self.stats.duplicate_chunks += 1;
            return;
        }
        if self.held.len() >= self.max_buffered_chunks && !self.evict_for(&chunk) {
            return;
        }
        self.held.insert(chunk.seq, chunk);
    }

    /// At the bound: evicts the lowest seq held to make room for `chunk`, or refuses
    /// `chunk` if it is lower still (false). The keyframe output starts or resumes at (the
    /// chunk at `next_seq`) is never the one evicted, so output still begins at a keyframe.
    fn evict_for(&mut self, chunk: &Held) -> bool {
        self.stats.chunks_dropped_full += 1;
        let protected = self.next_seq.filter(|seq| self.held.get(seq).is_some_and(|c| c.keyframe));
        let newcomer_protected = self.next_seq == Some(chunk.seq) && chunk.keyframe;
        // At most one seq is protected, so this looks at no more than two keys.
        let victim = self.held.keys().copied().find(|&seq| Some(seq) != protected);
        match victim {
            Some(seq) if newcomer_protected || seq < chunk.seq => {
                self.held.remove(&seq);
                true
            }
            _ => false,
        }
    }

    /// The next chunk to output, in sequence order, once due. Call until None.
    pub fn poll_output(&mut self, now_us: u64) -> Option<PlayoutChunk> {
        self.begin(now_us);
        self.last_poll_us = now_us;
        let mut next_seq = self.next_seq?;
        self.awaiting_keyframe_until_us = None;
        loop {
            let (&first_seq, first) = self.held.first_key_value()?;
            let first_deadline_us = self.deadline_us(first.ingest_us);
            if now_us > first_deadline_us.saturating_add(self.max_behind_us) && !self.in_order_until_insert {
                match self.catch_up(now_us, first_seq) {
                    CatchUp::SkipTo(keyframe_seq) => {
                        self.give_up(now_us, next_seq, keyframe_seq, first_deadline_us, true);
                        next_seq = keyframe_seq;
                        continue;
                    }
                    CatchUp::AwaitKeyframe { until_us } => {
                        self.awaiting_keyframe_until_us = Some(until_us);
                        return None;
                    }
                    CatchUp::PlayInOrder => self.in_order_until_insert = true,
                }
            }
            if self.stats.chunks_out == 0 && first_deadline_us > now_us {
                self.start_early(now_us, next_seq);
            }
            if first_deadline_us.saturating_sub(self.ahead_us) > now_us {
                return None;
            }
            if self.stats.chunks_out == 0 {
                if self.start_from_stream_head() {
                    next_seq = 0;
                    continue;
                }
                match self.wait_for_start_group(now_us, next_seq, first_deadline_us) {
                    // Due later now.
                    StartGroup::Wait => continue,
                    StartGroup::RestartAt(keyframe_seq) => {
                        // A margin of its own for the new start.
                        self.start_at(keyframe_seq);
                        self.start_shift_us = 0;
                        self.stats.start_restarts += 1;
                        next_seq = keyframe_seq;
                        continue;
                    }
                    StartGroup::Go => {}
                }
            }
            // Running ahead, a hole is waited for until the chunk after it is due at the
            // target lag (`poll_timeout` wakes then): the lead is the swarm's to take back.
            if first_seq > next_seq && self.ahead_us > 0 && first_deadline_us > now_us {
                return None;
            }
            // A hole before the first held chunk is given up now that the chunk is due.
            self.give_up(now_us, next_seq, first_seq, first_deadline_us, false);
            let (_, held) = self.held.pop_first()?;
            self.emit(now_us, &held);
            return Some(held.chunk);
        }
    }

    /// Before the first output, with the start keyframe due at `due_us` ≤ `now_us`: unless
    /// the chunks held from it on, without a gap, are due until `start_margin` from now,
    /// moves every deadline later (at most `start_margin` in all) and waits for the rest of
    /// the group. When the margin has run out with a gap still open, a later keyframe held
    /// beyond the gap is a better start (see "Start margin").
    fn wait_for_start_group(&mut self, now_us: u64, next_seq: u64, due_us: u64) -> StartGroup {
        let left_us = self.start_margin_us.saturating_sub(self.start_shift_us);
        // Only at a start keyframe a newcomer was handed (held, first in line): a viewer
        // that starts from the channel's first chunk has no group on the way.
        let at_start_keyframe =
            self.held.first_key_value().is_some_and(|(&seq, c)| seq == next_seq && c.keyframe);
        if self.start_margin_us == 0 || self.start_seq == 0 || !at_start_keyframe {
            return StartGroup::Go;
        }
        // The chunks from the keyframe on, without a gap, must reach `start_margin` past
        // now: as a player's initial buffer, they carry output while the rest comes in.
        let horizon_us = now_us.saturating_add(self.start_margin_us);
        let mut covered_until_us = due_us;
        let mut run_end = next_seq;
        for (seq, c) in self.gapless_run(next_seq) {
            if covered_until_us >= horizon_us {
                break;
            }
            covered_until_us = self.deadline_us(c.ingest_us);
            run_end = seq;
        }
        if covered_until_us >= horizon_us {
            return StartGroup::Go;
        }
        if left_us == 0 {
            // A gap about to fall due would be given up in the first moments of output (and
            // a decoder shows broken pictures until the next keyframe); a keyframe held past
            // the gap starts clean, and costs nothing that was ever output. A gap further
            // off may still fill in time: output goes ahead.
            let gap_due_soon = covered_until_us < now_us.saturating_add(RESTART_IF_GAP_DUE_WITHIN_US);
            // The run ended at a gap (or at the newest chunk held: then nothing is past it).
            let gap = run_end + 1;
            let later = self
                .held
                .range(gap..)
                .find(|(_, c)| c.keyframe)
                .map(|(&seq, _)| seq)
                .filter(|_| gap_due_soon);
            return match later {
                Some(seq) => StartGroup::RestartAt(seq),
                None => StartGroup::Go,
            };
        }
        // Due again a step from now (any arrival polls sooner).
        let wait_us = now_us.saturating_sub(due_us).saturating_add(START_WAIT_STEP_US).min(left_us);
        self.start_shift_us += wait_us;
        StartGroup::Wait
    }

    /// The chunks held from `from` on, in seq order, up to the first seq missing.
    fn gapless_run(&self, from: u64) -> impl Iterator<Item = (u64, &Held)> + '_ {
        (from..)
            .zip(self.held.range(from..))
            .take_while(|(expected, (&seq, _))| seq == *expected)
            .map(|(seq, (_, c))| (seq, c))
    }

    /// The first call of `insert` or `poll_output` starts the startup budget's clock.
    fn begin(&mut self, now_us: u64) {
        if !self.begun {
            self.begun = true;
            self.began_us = now_us;
            self.start_by_us = self.startup_budget_us.map(|b| now_us.saturating_add(b));
        }
    }

    /// Before the first output, with the start keyframe not yet due: once the startup
    /// budget has run out, starts output now if the chunks held from the keyframe on,
    /// without a gap, span `start_margin` of stream, running the schedule ahead by what is
    /// left of the keyframe's wait (see "Startup budget"). The keyframe must be old enough
    /// to have met the budget, unless the start already moved to it from an earlier one.
    fn start_early(&mut self, now_us: u64, next_seq: u64) {
        let Some(start_by_us) = self.start_by_us else { return };
        // Once: a start already running ahead, or already shifted later by the start
        // margin (its group came late), is not moved again.
        if self.ahead_us > 0 || self.start_shift_us > 0 {
            return;
        }
        let Some((&seq, keyframe)) = self.held.first_key_value() else { return };
        if seq != next_seq || !keyframe.keyframe || now_us < self.early_start_from_us(keyframe.ingest_us) {
            return;
        }
        // A keyframe too young to meet the budget anyway (the channel began after we
        // started watching, say): keep the target lag. Not after a restart: that start
        // has missed the budget already (its first keyframe's group did not come), and
        // at the target lag its first byte would wait most of a latency more.
        let span_until_us = keyframe.ingest_us.saturating_add(self.start_margin_us);
        if span_until_us.saturating_sub(self.skew_us) > start_by_us && self.stats.start_restarts == 0 {
            return;
        }
        if !self.gapless_run(next_seq).any(|(_, c)| c.ingest_us >= span_until_us) {
            return;
        }
        self.ahead_us = self.deadline_us(keyframe.ingest_us).saturating_sub(now_us);
        self.stats.start_ahead_us = self.ahead_us;
    }

    /// The earliest an early start at a keyframe ingested at `ingest_us` may begin: when
    /// the budget ends, and no more than half the latency before the keyframe's deadline
    /// (a viewer that asked for a deep buffer keeps at least half of it).
    fn early_start_from_us(&self, ingest_us: u64) -> u64 {
        let start_by_us = self.start_by_us.unwrap_or(u64::MAX);
        start_by_us.max(self.deadline_us(ingest_us).saturating_sub(self.latency_us / 2))
    }

    /// Before the first output: output will start at keyframe `seq`; what is held below
    /// it is before our start.
    fn start_at(&mut self, seq: u64) {
        let from_start = self.held.split_off(&seq);
        let before = std::mem::replace(&mut self.held, from_start);
        for (s, c) in before {
            self.keep_stream_head(s, c);
        }
        self.start_seq = seq;
        self.next_seq = Some(seq);
    }

    /// Before the first output: keep a chunk below the start keyframe if it may belong to
    /// the channel's beginning, else count it as before our start.
    fn keep_stream_head(&mut self, seq: u64, chunk: Held) {
        if seq < MAX_STREAM_HEAD_CHUNKS && !self.stream_head.contains_key(&seq) {
            // seq < MAX_STREAM_HEAD_CHUNKS bounds the map to that many entries.
            self.stream_head.insert(seq, chunk);
        } else {
            self.stats.chunks_before_start += 1;
        }
    }

    /// At the first output: if we were present from the start and every chunk from seq 0
    /// to the start keyframe is held, output starts at seq 0 (returns true); otherwise
    /// those chunks are before our start.
    fn start_from_stream_head(&mut self) -> bool {
        let head = std::mem::take(&mut self.stream_head);
        let complete = self.start_seq > 0
            && head.len() as u64 == self.start_seq
            && head.keys().copied().eq(0..self.start_seq);
        // In the publisher's clock, when we began (see `skew_us`).
        let began_us = self.began_us.saturating_add(self.skew_us);
        let present = head
            .get(&0)
            .is_some_and(|c| began_us <= c.ingest_us.saturating_add(duration_us(PRESENT_AT_START_WITHIN)));
        if !complete || !present {
            self.stats.chunks_before_start += head.len() as u64;
            return false;
        }
        self.held.extend(head);
        self.start_seq = 0;
        self.next_seq = Some(0);
        true
    }

    /// When `poll_output` may next return something (µs), if anything is buffered. May be
    /// in the past: then poll now.
    pub fn poll_timeout(&self) -> Option<u64> {
        let next_seq = self.next_seq?;
        let (&first_seq, first) = self.held.first_key_value()?;
        if let Some(until_us) = self.awaiting_keyframe_until_us {
            return Some(until_us);
        }
        let deadline_us = self.deadline_us(first.ingest_us);
        // A hole is waited for until its successor's deadline; a chunk held in order
        // leaves `ahead_us` before its deadline.
        let mut at_us =
            if first_seq > next_seq { deadline_us } else { deadline_us.saturating_sub(self.ahead_us) };
        // Before the first output, the moment an early start may begin (later, arrivals
        // wake the caller).
        if self.start_by_us.is_some() && self.stats.chunks_out == 0 && first.keyframe {
            let early_us = self.early_start_from_us(first.ingest_us);
            if early_us > self.last_poll_us {
                at_us = at_us.min(early_us);
            }
        }
        Some(at_us)
    }

    pub fn stats(&self) -> PlayoutStats {
        let mut stats = self.stats.clone();
        stats.buffered_chunks = self.held.len();
        stats.buffered_us = match (self.held.first_key_value(), self.held.last_key_value()) {
            (Some((_, oldest)), Some((_, newest))) => newest.ingest_us.saturating_sub(oldest.ingest_us),
            _ => 0,
        };
        stats.skew_us = self.skew_us;
        stats.start_shift_us = self.start_shift_us;
        stats.ahead_us = self.ahead_us;
        stats
    }

    /// Deadline in our clock of a chunk ingested at `ingest_us` (see Clock skew).
    fn deadline_us(&self, ingest_us: u64) -> u64 {
        ingest_us
            .saturating_add(self.latency_us)
            .saturating_add(self.start_shift_us)
            .saturating_sub(self.skew_us)
    }

    /// Whether a chunk with this deadline is still within `max_behind` of it at `now_us`.
    fn fresh(&self, now_us: u64, deadline_us: u64) -> bool {
        deadline_us.saturating_add(self.max_behind_us) >= now_us
    }

    fn catch_up(&self, now_us: u64, first_seq: u64) -> CatchUp {
        let newer = self.held.range(first_seq + 1..).rev();
        let target = newer
            .filter(|(_, c)| c.keyframe && self.fresh(now_us, self.deadline_us(c.ingest_us)))
            .map(|(&seq, _)| seq)
            .next();
        if let Some(seq) = target {
            return CatchUp::SkipTo(seq);
        }
        // The held map is not empty here (the caller holds its first entry).
        match self.held.last_key_value() {
            Some((_, newest)) => {
                let newest_deadline_us = self.deadline_us(newest.ingest_us);
                if self.fresh(now_us, newest_deadline_us) {
                    CatchUp::AwaitKeyframe {
                        until_us: newest_deadline_us.saturating_add(self.max_behind_us).saturating_add(1),
                    }
                } else {
                    CatchUp::PlayInOrder
                }
            }
            None => CatchUp::PlayInOrder,
        }
    }

    /// Gives up seqs `from..to` (counted lost), dropping what is held of them.
    /// `due_us` is the earliest deadline among them we know of, for stall accounting.
    fn give_up(&mut self, now_us: u64, from: u64, to: u64, due_us: u64, catch_up: bool) {
        if to <= from {
            return;
        }
        let lost = to - from;
        self.stats.lost_chunks += lost;
        if catch_up {
            self.stats.skipped_for_catch_up += lost;
            // Output stood still from the first skipped chunk's deadline until now.
            self.count_stall(due_us.saturating_add(ON_TIME_SLACK_US), now_us);
        }
        if let Some(first_output_us) = self.stats.first_output_us {
            // A hole's own deadline is unknown; the chunk after it (due at `due_us`)
            // stands in for it.
            if catch_up || due_us > first_output_us {
                self.stats.lost_after_startup += lost;
            }
        }
        let kept = self.held.split_off(&to);
        self.held = kept;
        if lost >= OUTCOME_WINDOW {
            self.output_bits = [0; (OUTCOME_WINDOW / 64) as usize];
        } else {
            for seq in from..to {
                self.set_outcome(seq, false);
            }
        }
        self.next_seq = Some(to);
    }

    fn emit(&mut self, now_us: u64, chunk: &Held) {
        let deadline_us = self.deadline_us(chunk.ingest_us);
        // When the schedule had it leave; a later output moves the rest of the schedule
        // later by as much (beyond the timer slack), giving back part of the lead.
        let scheduled_us = deadline_us.saturating_sub(self.ahead_us);
        let late_us = now_us.saturating_sub(scheduled_us.saturating_add(ON_TIME_SLACK_US));
        let first_output_us = *self.stats.first_output_us.get_or_insert(now_us);
        if self.stall_counted_until_us < first_output_us {
            // Waiting before the first output is startup delay, not stall.
            self.stall_counted_until_us = first_output_us;
        }
        if deadline_us > first_output_us {
            self.stats.chunks_due_after_startup += 1;
            let on_time_until_us = deadline_us.saturating_add(ON_TIME_SLACK_US);
            if now_us <= on_time_until_us {
                self.stats.chunks_on_time += 1;
            } else if chunk.arrived_us > on_time_until_us {
                self.stats.late_out_arrived_late += 1;
            } else {
                self.stats.late_out_held_in_time += 1;
            }
        }
        self.count_stall(scheduled_us.saturating_add(ON_TIME_SLACK_US), now_us);
        self.ahead_us = self.ahead_us.saturating_sub(late_us);
        let lag_us = now_us.saturating_add(self.skew_us).saturating_sub(chunk.ingest_us);
        self.stats.playout_lag.record(lag_us);
        self.stats.last_playout_lag_us = Some(lag_us);
        self.stats.chunks_out += 1;
        self.stats.bytes_out += chunk.payload.len() as u64;
        self.set_outcome(chunk.seq, true);
        self.next_seq = Some(chunk.seq + 1);
    }

    /// Adds `[from_us, to_us)` to stalled time, except what is already counted.
    fn count_stall(&mut self, from_us: u64, to_us: u64) {
        if self.stats.first_output_us.is_none() {
            return;
        }
        let from_us = from_us.max(self.stall_counted_until_us);
        if to_us > from_us {
            self.stats.stalled_us += to_us - from_us;
            self.stall_counted_until_us = to_us;
        }
    }

    fn set_outcome(&mut self, seq: u64, output: bool) {
        let bit = seq % OUTCOME_WINDOW;
        let word = &mut self.output_bits[(bit / 64) as usize];
        if output {
            *word |= 1 << (bit % 64);
        } else {
            *word &= !(1 << (bit % 64));
        }
    }

    fn was_output(&self, seq: u64) -> bool {
        let bit = seq % OUTCOME_WINDOW;
        self.output_bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "playout_tests.rs"]
mod tests;
