//! Anti-replay window for packet counters, following the bitmap design of RFC 6479.
//!
//! Every authenticated packet carries a 64-bit counter that the sender never reuses. The receiver
//! remembers which recent counters it has accepted, so a captured packet sent again (or a
//! duplicate produced by the network) is dropped instead of delivered twice.
//!
//! RFC 6479 §2 keeps the recent history as a ring of fixed-size blocks of bits. Moving the window
//! forward only clears the blocks it passes over, one word at a time, instead of shifting the
//! whole bitmap as the older RFC 4303 Appendix A scheme does. The price is one block of slack:
//! the block holding the highest counter is only partly "in the past", so of the
//! [`REPLAY_WINDOW_BITS`] bits, [`REPLAY_WINDOW_BITS`]` - 64` are guaranteed history.
//!
//! Usable window: with `h` the highest counter accepted so far, a counter `c <= h` is accepted
//! only if `h - c <= REPLAY_WINDOW_BITS - 64` (8128) and `c` was not accepted before. Counters
//! above `h` are always accepted and move the window forward.

/// Size of the bitmap in bits. The value is WireGuard's (Linux `drivers/net/wireguard/messages.h`,
/// `COUNTER_BITS_TOTAL`), which uses the same RFC 6479 §2 design; with 64-bit blocks it leaves a
/// usable window of 8128 counters, enough for several milliseconds of reordering at multi-Gbit/s.
pub const REPLAY_WINDOW_BITS: u64 = 8192;

/// Bits per bitmap block: one machine word, the block size RFC 6479 §2 suggests for 64-bit CPUs.
const BLOCK_BITS: u64 = u64::BITS as u64;

/// log2 of [`BLOCK_BITS`], to turn a counter into its block number with a shift (RFC 6479 §2).
const BLOCK_SHIFT: u32 = BLOCK_BITS.trailing_zeros();

/// Number of blocks in the ring (RFC 6479 §2): a power of two, so the ring index is a mask.
const BLOCKS: usize = (REPLAY_WINDOW_BITS / BLOCK_BITS) as usize;

/// How far behind the highest counter a counter may be and still be checked against the bitmap:
/// the whole bitmap minus the one block of slack RFC 6479 §2 sets aside for the current block.
const USABLE_WINDOW: u64 = REPLAY_WINDOW_BITS - BLOCK_BITS;

// The ring index is computed with a mask, which needs a power-of-two block count.
const _: () = assert!(BLOCKS.is_power_of_two() && BLOCKS >= 2);

/// The record of which recent counters have been accepted.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Ring of blocks; counter `c` lives in block `(c >> 6) % BLOCKS`, bit `c % 64`.
    bitmap: [u64; BLOCKS],
    /// The highest counter accepted, `None` until the first one.
    highest: Option<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

/// Where counter `c` lives: (ring index of its block, bit mask within the block).
fn slot(counter: u64) -> (usize, u64) {
    let block = (counter >> BLOCK_SHIFT) as usize & (BLOCKS - 1);
    (block, 1u64 << (counter & (BLOCK_BITS - 1)))
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable until something is marked.
    pub fn new() -> Self {
        Self { bitmap: [0; BLOCKS], highest: None }
    }

    /// Cheap pre-check before decryption: `false` if `counter` is too far behind the window or
    /// has already been marked. Does not change state.
    ///
    /// Decryption is the expensive step, so obvious replays are dropped before it; but only an
    /// authenticated packet may [`mark`](Self::mark) the window, otherwise a forger could push the
    /// window forward with junk and make the peer drop genuine traffic.
    pub fn check(&self, counter: u64) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        if counter > highest {
            return true;
        }
        if highest - counter > USABLE_WINDOW {
            return false;
        }
        let (block, bit) = slot(counter);
        self.bitmap[block] & bit == 0
    }

    /// Records `counter` after its packet authenticated. Returns `false`, changing nothing, if the
    /// counter is too old or was already recorded (a replay).
    ///
    /// A counter above the highest slides the window forward, clearing each block it passes over;
    /// a jump of the whole bitmap or more clears every block, so the cost is at most
    /// `REPLAY_WINDOW_BITS / 64` word writes.
    pub fn mark(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.highest {
            Some(highest) if counter <= highest => {}
            Some(highest) => {
                let old_block = highest >> BLOCK_SHIFT;
                let new_block = counter >> BLOCK_SHIFT;
                // Blocks strictly after the old current block up to the new one now hold
                // counters from a previous turn of the ring; they must start empty.
                let advance = (new_block - old_block).min(BLOCKS as u64);
                for step in 1..=advance {
                    let index = (old_block.wrapping_add(step)) as usize & (BLOCKS - 1);
                    self.bitmap[index] = 0;
                }
                self.highest = Some(counter);
            }
            // First counter: the bitmap is still all zeros from `new`.
            None => self.highest = Some(counter),
        }
        let (block, bit) = slot(counter);
        self.bitmap[block] |= bit;
        true
    }

    /// The highest counter marked so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_counters_are_accepted() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for c in 0..20_000u64 {
            assert!(w.check(c), "{c}");
            assert!(w.mark(c), "{c}");
            assert_eq!(w.highest(), Some(c));
        }
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut w = ReplayWindow::default();
        assert!(w.mark(5));
        assert!(!w.check(5));
        assert!(!w.mark(5));
        assert!(w.mark(6));
        assert!(!w.mark(5));
        assert!(!w.mark(6));
        assert_eq!(w.highest(), Some(6));
    }

    #[test]
    fn reordered_within_window_accepted_once() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(10_000));
        for c in (10_000 - USABLE_WINDOW..10_000).rev() {
            assert!(w.check(c), "{c}");
            assert!(w.mark(c), "{c}");
            assert!(!w.mark(c), "{c}");
        }
        assert_eq!(w.highest(), Some(10_000));
        // Interleaved arrival: odd counters first, then the even ones fill in.
        let mut w = ReplayWindow::new();
        for c in (1..200u64).step_by(2) {
            assert!(w.mark(c));
        }
        for c in (0..200u64).step_by(2) {
            assert!(w.mark(c));
        }
        for c in 0..200u64 {
            assert!(!w.check(c));
        }
    }

    #[test]
    fn too_old_is_rejected() {
        let mut w = ReplayWindow::new();
        let h = 100_000u64;
        assert!(w.mark(h));
        // Exactly at the edge of the usable window: still tracked.
        assert!(w.check(h - USABLE_WINDOW));
        // One further back: rejected, and marking it changes nothing.
        assert!(!w.check(h - USABLE_WINDOW - 1));
        assert!(!w.mark(h - USABLE_WINDOW - 1));
        assert!(!w.mark(0));
        assert_eq!(w.highest(), Some(h));
        assert!(w.mark(h - USABLE_WINDOW));
        assert!(!w.mark(h - USABLE_WINDOW));
    }

    #[test]
    fn huge_jump_forward_clears_old_state() {
        let mut w = ReplayWindow::new();
        for c in 0..REPLAY_WINDOW_BITS {
            assert!(w.mark(c));
        }
        // Jump so far that every old block maps onto a slot that must now be empty.
        let jump = 1_000_000u64;
        assert!(w.mark(jump));
        for c in jump - USABLE_WINDOW..jump {
            assert!(w.check(c), "stale bit leaked into counter {c}");
        }
        assert!(!w.check(jump));
        // Old counters are now too old.
        assert!(!w.check(REPLAY_WINDOW_BITS - 1));

        // A jump of exactly one ring turn, which maps to the same block positions.
        let mut w = ReplayWindow::new();
        for c in 0..64 {
            assert!(w.mark(c));
        }
        assert!(w.mark(REPLAY_WINDOW_BITS));
        for c in REPLAY_WINDOW_BITS + 1..REPLAY_WINDOW_BITS + 64 {
            assert!(w.check(c), "{c}");
        }
    }

    #[test]
    fn partial_slide_clears_only_passed_blocks() {
        let mut w = ReplayWindow::new();
        for c in 0..1000u64 {
            assert!(w.mark(c));
        }
        assert!(w.mark(5000));
        for c in 0..1000u64 {
            assert!(!w.check(c), "{c} forgotten too early");
        }
        for c in 1000..5000u64 {
            assert!(w.check(c), "{c}");
        }
    }

    #[test]
    fn counter_zero_works() {
        let mut w = ReplayWindow::new();
        assert!(w.check(0));
        assert!(w.mark(0));
        assert_eq!(w.highest(), Some(0));
        assert!(!w.check(0));
        assert!(!w.mark(0));
        assert!(w.mark(1));
    }

    #[test]
    fn values_near_u64_max_do_not_overflow() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(u64::MAX - 10_000));
        assert!(w.mark(u64::MAX - 1));
        assert!(w.mark(u64::MAX));
        assert!(!w.mark(u64::MAX));
        assert!(!w.check(u64::MAX - 1));
        assert!(w.mark(u64::MAX - 2));
        assert!(w.check(u64::MAX - USABLE_WINDOW));
        assert!(!w.check(u64::MAX - USABLE_WINDOW - 1));
        assert!(!w.check(0));
        assert_eq!(w.highest(), Some(u64::MAX));

        let mut w = ReplayWindow::new();
        assert!(w.mark(0));
        assert!(w.mark(u64::MAX));
        assert!(!w.check(0));
        assert!(w.check(u64::MAX - 1));
    }

    /// The reference model: every accepted counter ever, plus the window rule stated in the
    /// module documentation.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
    }

    impl Model {
        fn accepts(&self, c: u64) -> bool {
            if self.seen.contains(&c) {
                return false;
            }
            match self.seen.last() {
                None => true,
                Some(&h) => c > h || h - c <= REPLAY_WINDOW_BITS - 64,
            }
        }

        fn mark(&mut self, c: u64) -> bool {
            let ok = self.accepts(c);
            if ok {
                self.seen.insert(c);
            }
            ok
        }
    }

    /// One step of a random arrival sequence, relative to the current highest counter so that
    /// sequences stay near the interesting edge of the window.
    #[derive(Debug, Clone)]
    enum Step {
        Ahead(u64),
        Behind(u64),
        Leap(u64),
        Repeat(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..300).prop_map(Step::Ahead),
            4 => (0u64..9_000).prop_map(Step::Behind),
            1 => (0u64..40_000).prop_map(Step::Leap),
            2 => any::<usize>().prop_map(Step::Repeat),
        ]
    }

    proptest! {
        #[test]
        fn matches_reference_model(
            start in prop_oneof![Just(0u64), 0u64..1_000_000, Just(u64::MAX - 50_000)],
            steps in proptest::collection::vec(step(), 1..400),
        ) {
            let mut w = ReplayWindow::new();
            let mut model = Model::default();
            let mut history: Vec<u64> = Vec::new();
            for s in steps {
                let base = w.highest().unwrap_or(start);
                let c = match s {
                    Step::Ahead(d) => base.saturating_add(d),
                    Step::Behind(d) => base.saturating_sub(d),
                    Step::Leap(d) => base.saturating_add(d),
                    Step::Repeat(i) if !history.is_empty() => history[i % history.len()],
                    Step::Repeat(_) => base,
                };
                history.push(c);
                prop_assert_eq!(w.check(c), model.accepts(c), "check({})", c);
                prop_assert_eq!(w.mark(c), model.mark(c), "mark({})", c);
                prop_assert_eq!(w.highest(), model.seen.last().copied());
            }
            // After the sequence, every counter near the edge agrees with the model too.
            if let Some(h) = w.highest() {
                for c in h.saturating_sub(REPLAY_WINDOW_BITS + 64)..=h.saturating_add(2) {
                    prop_assert_eq!(w.check(c), model.accepts(c), "final check({})", c);
                }
            }
        }
    }
}
