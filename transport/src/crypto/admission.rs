//! Handshake admission under load: deciding, before doing any Diffie-Hellman work, whether an
//! incoming handshake initiation is processed, answered with a cookie challenge, or dropped.
//!
//! Two pieces, both sans-IO and deterministic (the caller passes `now` and the RNG):
//! - [`CookieJar`]: stateless address-validation cookies, in the manner of WireGuard's cookie
//!   reply (WireGuard paper §5.4.7) and QUIC Retry tokens (RFC 9000 §8.1.2). A cookie proves the
//!   initiator can receive at the address it claims, so spoofed floods cannot get past it, and
//!   the responder keeps no per-initiator state to issue or check one.
//! - [`Admission`]: token-bucket rate limits on handshake work, global and per source IP, in a
//!   table of bounded size, plus the "under load" signal that switches cookies on.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_core::RngCore;
use ring::hmac;
use zeroize::Zeroizing;

/// Cookie length: HMAC-SHA256 truncated to 128 bits. RFC 2104 §5 recommends keeping at least
/// half the hash output, and 16 bytes is also WireGuard's cookie size (WireGuard paper §5.4.7).
pub const COOKIE_LEN: usize = 16;

/// How long a cookie secret is used for minting before it is replaced. WireGuard changes its
/// cookie secret `R_m` every two minutes (WireGuard paper §5.4.7); we keep the same period.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(120);

/// Cookie secret length: an HMAC key as long as the hash output, the minimum RFC 2104 §3
/// recommends (shorter keys "strongly discouraged").
const COOKIE_SECRET_LEN: usize = 32;

/// Domain-separation label for the cookie MAC, so a cookie secret can never be confused with
/// a MAC over any other message format.
const COOKIE_LABEL: &[u8] = b"rill-cookie-v1";

/// A cookie secret, wiped from memory when dropped.
type CookieSecret = Zeroizing<[u8; COOKIE_SECRET_LEN]>;

/// Stateless address-validation cookies.
///
/// `token = HMAC-SHA256(secret, label || remote address || initiator_session_id (u32 BE) ||
/// epoch (u64 BE))[..16]`, where `epoch` counts secret rotations (the "time bucket"). The
/// secret rotates every [`COOKIE_SECRET_LIFETIME`]; tokens minted under the current or the
/// previous secret are accepted, so a token stays valid for at least one and at most two
/// lifetimes — provided [`refresh`](Self::refresh) is called with every use, which is what
/// rotates secrets.
pub struct CookieJar {
    current: CookieSecret,
    /// The secret before `current`; `None` right after creation or after a gap of two lifetimes
    /// or more, when no token under it could still be valid.
    previous: Option<CookieSecret>,
    /// Number of rotations so far; bound into every token.
    epoch: u64,
    rotated_at: Instant,
}

impl fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieJar")
            .field("epoch", &self.epoch)
            .field("rotated_at", &self.rotated_at)
            .field("has_previous", &self.previous.is_some())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

fn fresh_secret(rng: &mut impl RngCore) -> CookieSecret {
    let mut secret = Zeroizing::new([0u8; COOKIE_SECRET_LEN]);
    rng.fill_bytes(&mut secret[..]);
    secret
}

impl CookieJar {
    /// A jar with a fresh secret drawn from `rng` (which should be a CSPRNG: the secret is all
    /// that keeps cookies unforgeable).
    pub fn new(now: Instant, rng: &mut impl RngCore) -> Self {
        CookieJar { current: fresh_secret(rng), previous: None, epoch: 0, rotated_at: now }
    }

    /// Rotates the secret if it is [`COOKIE_SECRET_LIFETIME`] old. Cheap when nothing is due;
    /// call it before every mint and verify. A clock that goes backwards never rotates.
    pub fn refresh(&mut self, now: Instant, rng: &mut impl RngCore) {
        let age = now.saturating_duration_since(self.rotated_at);
        if age < COOKIE_SECRET_LIFETIME {
            return;
        }
        if age >= COOKIE_SECRET_LIFETIME.saturating_mul(2) {
            // Both secrets are past use: any token under either was minted more than one
            // lifetime ago, which is all we promise. Advance the epoch by two so tokens under
            // the old current secret cannot match the new previous slot's epoch either.
            self.previous = None;
            self.current = fresh_secret(rng);
            self.epoch = self.epoch.wrapping_add(2);
        } else {
            let old = std::mem::replace(&mut self.current, fresh_secret(rng));
            self.previous = Some(old);
            self.epoch = self.epoch.wrapping_add(1);
        }
        // Anchor the next rotation to now rather than to the old schedule: a token minted just
        // before a late refresh then still gets a full lifetime under `previous`.
        self.rotated_at = now;
    }

    /// The cookie for an initiation from `remote` carrying `initiator_id`.
    pub fn mint(&self, remote: SocketAddr, initiator_id: u32) -> [u8; COOKIE_LEN] {
        let tag = cookie_tag(&self.current, self.epoch, remote, initiator_id);
        let mut out = [0u8; COOKIE_LEN];
        out.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        out
    }

    /// Whether `cookie` was minted for (`remote`, `initiator_id`) under the current or previous
    /// secret. The comparison is constant-time in the cookie contents.
    pub fn verify(&self, remote: SocketAddr, initiator_id: u32, cookie: &[u8]) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        let current = cookie_tag(&self.current, self.epoch, remote, initiator_id);
        let mut ok = ct_eq(&current.as_ref()[..COOKIE_LEN], cookie);
        if let Some(previous) = &self.previous {
            let prev = cookie_tag(previous, self.epoch.wrapping_sub(1), remote, initiator_id);
            // Non-short-circuit `|`: the work done does not depend on which secret matched.
            ok |= ct_eq(&prev.as_ref()[..COOKIE_LEN], cookie);
        }
        ok
    }
}

/// The full HMAC-SHA256 tag over the cookie input.
fn cookie_tag(secret: &CookieSecret, epoch: u64, remote: SocketAddr, initiator_id: u32) -> hmac::Tag {
    // The key schedule is rebuilt per call so that the only long-lived copy of the secret is the
    // zeroized one; it costs two SHA-256 compressions, negligible next to one X25519.
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret[..]);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(COOKIE_LABEL);
    // Family tag byte keeps IPv4 and IPv6 encodings from ever colliding.
    match remote.ip() {
        IpAddr::V4(ip) => {
            ctx.update(&[4]);
            ctx.update(&ip.octets());
        }
        IpAddr::V6(ip) => {
            ctx.update(&[6]);
            ctx.update(&ip.octets());
        }
    }
    ctx.update(&remote.port().to_be_bytes());
    ctx.update(&initiator_id.to_be_bytes());
    ctx.update(&epoch.to_be_bytes());
    ctx.sign()
}

/// Constant-time equality of two byte strings. Lengths are public; only contents are hidden.
/// (ring 0.17.14 deprecates `ring::constant_time::verify_slices_are_equal`, and `hmac::verify`
/// only checks full-length tags, so we fold the differences ourselves.)
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Rate limits and thresholds for [`Admission`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Handshakes processed per second, all sources together (token refill rate).
    pub global_per_s: u32,
    /// Global bucket size: handshakes processed back to back after a quiet period.
    pub global_burst: u32,
    /// Handshakes (and, separately, challenges) per second from one source IP or IPv6 /64.
    pub per_source_per_s: u32,
    /// Per-source bucket size.
    pub per_source_burst: u32,
    /// Size bound of the per-source table; the least recently used entry is evicted when full.
    /// Treated as at least 1.
    pub max_sources: usize,
    /// Above this many half-open handshakes the endpoint counts as under load.
    pub max_half_open: usize,
}

impl Default for AdmissionConfig {
    /// - `global_per_s` 1000, `global_burst` 200: an IK responder does four X25519 operations
    ///   (`e`, `es`, `s`, `ss` then `ee`, `se`: Noise spec §7.5), roughly 200 µs of CPU, so
    ///   1000/s is about a fifth of a core; a burst of 200 is 40 ms of that work.
    /// - `per_source_per_s` 20: WireGuard's per-IP handshake limit (Linux
    ///   `drivers/net/wireguard/ratelimiter.c`, `PACKETS_PER_SECOND = 20`). `per_source_burst`
    ///   10 instead of WireGuard's 5, because several rill nodes may share one public IPv4
    ///   address behind a NAT (RFC 6888 carrier-grade NAT) and start at the same time.
    /// - `max_sources` 4096: a few hundred KiB. At most about `global_per_s` sources are
    ///   accepted per second, so the table remembers several seconds of distinct legitimate
    ///   sources, longer than the half second a per-source bucket takes to refill (10 / 20/s);
    ///   evicting an entry that old loses nothing unless spoofed floods churn the table.
    /// - `max_half_open` 256: at 1000 accepted handshakes per second and round trips up to
    ///   ~250 ms, about 250 handshakes are legitimately in flight; more suggests initiators
    ///   that never finish.
    fn default() -> Self {
        AdmissionConfig {
            global_per_s: 1000,
            global_burst: 200,
            per_source_per_s: 20,
            per_source_burst: 10,
            max_sources: 4096,
            max_half_open: 256,
        }
    }
}

/// What to do with one incoming handshake initiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it (the rate-limit tokens are already taken).
    Accept,
    /// Send a cookie challenge instead of doing any DH work.
    Challenge,
    /// Drop silently.
    Drop,
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// Initiations accepted for processing.
    pub accepted: u64,
    /// Cookie challenges asked for.
    pub challenged: u64,
    /// Initiations dropped because a handshake bucket (per-source or global) was empty.
    pub dropped_rate_limited: u64,
    /// Initiations dropped under load because the source's challenge bucket was empty.
    pub dropped_challenge_limited: u64,
    /// Initiations dropped under load because their cookie did not verify.
    pub dropped_bad_cookie: u64,
    /// Entries currently in the per-source table.
    pub sources_tracked: usize,
    /// Entries evicted from the per-source table to make room.
    pub sources_evicted: u64,
}

/// Token-bucket resolution: one token (one handshake) is 10^9 units, so refilling `rate`
/// tokens per second adds exactly `rate` units per elapsed nanosecond, with no rounding.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// A token bucket (as in the Linux WireGuard rate limiter: the burst is the bucket size).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: u64,
    last: Instant,
}

impl Bucket {
    fn full(now: Instant, burst: u32) -> Self {
        Bucket { units: capacity(burst), last: now }
    }

    /// The level at `now` without changing the bucket. Time going backwards adds nothing.
    fn level(&self, now: Instant, per_s: u32, burst: u32) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let added = elapsed.saturating_mul(u128::from(per_s));
        let level = u128::from(self.units).saturating_add(added).min(u128::from(capacity(burst)));
        u64::try_from(level).unwrap_or(u64::MAX)
    }

    fn refill(&mut self, now: Instant, per_s: u32, burst: u32) {
        self.units = self.level(now, per_s, burst);
        if now > self.last {
            self.last = now;
        }
    }

    fn has_token(&self) -> bool {
        self.units >= UNITS_PER_TOKEN
    }

    fn take(&mut self) {
        self.units = self.units.saturating_sub(UNITS_PER_TOKEN);
    }
}

/// Bucket capacity in units; `u32::MAX * 10^9` fits in a `u64`.
fn capacity(burst: u32) -> u64 {
    u64::from(burst).saturating_mul(UNITS_PER_TOKEN)
}

/// What a source is keyed by: the IPv4 address, or the IPv6 /64 prefix (the unit one site or
/// host usually gets, RFC 4291 §2.5.1 interface ids; WireGuard's rate limiter likewise keys IPv6
/// by its first 64 bits). The port is ignored: an attacker can vary it freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    fn of(addr: SocketAddr) -> Self {
        match addr.ip() {
            IpAddr::V4(ip) => SourceKey::V4(u32::from(ip)),
            // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 (RFC 4291 §2.5.5.2);
            // without this every IPv4 peer would share the ::ffff:0:0/64 bucket.
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6((u128::from(ip) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct SourceEntry {
    handshakes: Bucket,
    challenges: Bucket,
    /// Position in the LRU index.
    stamp: u64,
}

/// Handshake admission control: rate limits on handshake work and the cookie switch.
///
/// The per-source table is bounded by `max_sources`: a new source evicts the least recently
/// used one, so a flood of spoofed sources churns the table but cannot grow it. Ordered maps are
/// used rather than hash maps: lookups stay O(log n) whatever keys an attacker picks, with no
/// hash seed to draw from a global RNG.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    global: Bucket,
    sources: BTreeMap<SourceKey, SourceEntry>,
    /// Last-use stamp -> source, oldest first; always the same entries as `sources`.
    lru: BTreeMap<u64, SourceKey>,
    next_stamp: u64,
    stats: AdmissionStats,
}

impl Admission {
    /// A controller with full buckets at `now`.
    pub fn new(config: AdmissionConfig, now: Instant) -> Self {
        Admission {
            global: Bucket::full(now, config.global_burst),
            config,
            sources: BTreeMap::new(),
            lru: BTreeMap::new(),
            next_stamp: 0,
            stats: AdmissionStats::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Whether cookies are demanded: the global bucket is below half full, or more than
    /// `max_half_open` handshakes are half open (`half_open` is the caller's current count).
    pub fn under_load(&self, now: Instant, half_open: usize) -> bool {
        if half_open > self.config.max_half_open {
            return true;
        }
        let level = self.global.level(now, self.config.global_per_s, self.config.global_burst);
        u128::from(level) * 2 < u128::from(capacity(self.config.global_burst))
    }

    /// Decides for one incoming handshake initiation from `source`. `cookie_valid` is `None` if
    /// it carried no cookie, else whether [`CookieJar::verify`] accepted it.
    ///
    /// - Not under load: take a per-source and a global token and accept, or drop if either
    ///   bucket is empty. A cookie, valid or not, is ignored: none is needed.
    /// - Under load, no cookie: challenge, which costs no handshake tokens but is limited per
    ///   source by its own bucket, so we cannot be aimed at a victim. We are no amplifier in any
    ///   case — the challenge is smaller than the initiation — so spoofed sources gain nothing
    ///   from it (compare RFC 9000 §8's anti-amplification limit of 3x).
    /// - Under load, invalid cookie: drop. An honest initiator uses a cookie within a round trip
    ///   of receiving it, well inside its lifetime.
    /// - Under load, valid cookie: the source address is proven, so take tokens as above.
    pub fn admit(
        &mut self,
        now: Instant,
        source: SocketAddr,
        half_open: usize,
        cookie_valid: Option<bool>,
    ) -> Verdict {
        let AdmissionConfig { global_per_s, global_burst, per_source_per_s, per_source_burst, .. } =
            self.config;
        let loaded = self.under_load(now, half_open);
        self.global.refill(now, global_per_s, global_burst);

        if loaded && cookie_valid == Some(false) {
            self.stats.dropped_bad_cookie += 1;
            return Verdict::Drop;
        }
        let global_ok = self.global.has_token();
        let entry = self.touch(SourceKey::of(source), now);
        if loaded && cookie_valid.is_none() {
            entry.challenges.refill(now, per_source_per_s, per_source_burst);
            if entry.challenges.has_token() {
                entry.challenges.take();
                self.stats.challenged += 1;
                return Verdict::Challenge;
            }
            self.stats.dropped_challenge_limited += 1;
            return Verdict::Drop;
        }
        entry.handshakes.refill(now, per_source_per_s, per_source_burst);
        // Take from both buckets or neither, so a source's tokens are not spent on handshakes
        // the global limit then refuses.
        let accept = entry.handshakes.has_token() && global_ok;
        if accept {
            entry.handshakes.take();
            self.global.take();
            self.stats.accepted += 1;
            Verdict::Accept
        } else {
            self.stats.dropped_rate_limited += 1;
            Verdict::Drop
        }
    }

    /// Counters and table size.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats { sources_tracked: self.sources.len(), ..self.stats }
    }

    /// The table entry for `key`, marked most recently used; created with full buckets (after
    /// evicting the least recently used entry if the table is full) if absent.
    fn touch(&mut self, key: SourceKey, now: Instant) -> &mut SourceEntry {
        // A u64 stamp per call cannot wrap in practice (584 years at 10^9 calls per second);
        // wrapping_add only keeps this free of overflow panics.
        let stamp = self.next_stamp;
        self.next_stamp = self.next_stamp.wrapping_add(1);
        let exists = match self.sources.get_mut(&key) {
            Some(entry) => {
                self.lru.remove(&entry.stamp);
                entry.stamp = stamp;
                true
            }
            None => false,
        };
        if !exists {
            while self.sources.len() >= self.config.max_sources.max(1) {
                let Some((_, oldest)) = self.lru.pop_first() else { break };
                self.sources.remove(&oldest);
                self.stats.sources_evicted += 1;
            }
        }
        self.lru.insert(stamp, key);
        let burst = self.config.per_source_burst;
        self.sources.entry(key).or_insert_with(|| SourceEntry {
            handshakes: Bucket::full(now, burst),
            challenges: Bucket::full(now, burst),
            stamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v4(n: u32, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(n)), port)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn cookie_valid_now_and_after_one_rotation_but_not_two() {
        let t0 = Instant::now();
        let mut r = rng(1);
        let mut jar = CookieJar::new(t0, &mut r);
        let a = addr("192.0.2.1:4000");
        let c = jar.mint(a, 7);
        assert!(jar.verify(a, 7, &c));

        // Just before the lifetime nothing rotates.
        jar.refresh(t0 + COOKIE_SECRET_LIFETIME - Duration::from_nanos(1), &mut r);
        assert_eq!(jar.epoch, 0);
        assert_eq!(jar.mint(a, 7), c);

        jar.refresh(t0 + COOKIE_SECRET_LIFETIME, &mut r);
        assert_eq!(jar.epoch, 1);
        assert!(jar.verify(a, 7, &c), "valid under the previous secret");
        let c1 = jar.mint(a, 7);
        assert_ne!(c1, c);

        jar.refresh(t0 + COOKIE_SECRET_LIFETIME * 2, &mut r);
        assert!(!jar.verify(a, 7, &c), "two rotations later");
        assert!(jar.verify(a, 7, &c1), "minted one rotation ago");
    }

    #[test]
    fn cookie_long_gap_discards_both_secrets() {
        let t0 = Instant::now();
        let mut r = rng(2);
        let mut jar = CookieJar::new(t0, &mut r);
        let a = addr("[2001:db8::1]:9");
        jar.refresh(t0 + COOKIE_SECRET_LIFETIME, &mut r);
        let c = jar.mint(a, 1);
        // One refresh after a gap of two lifetimes: the token's secret is gone.
        jar.refresh(t0 + COOKIE_SECRET_LIFETIME * 3, &mut r);
        assert!(!jar.verify(a, 1, &c));
        assert!(jar.previous.is_none());
        // A clock going backwards changes nothing.
        let c2 = jar.mint(a, 1);
        jar.refresh(t0, &mut r);
        assert!(jar.verify(a, 1, &c2));
    }

    #[test]
    fn cookie_rejects_wrong_address_port_id_or_tampering() {
        let t0 = Instant::now();
        let jar = CookieJar::new(t0, &mut rng(3));
        let a = addr("198.51.100.7:5000");
        let c = jar.mint(a, 0xdead_beef);
        assert!(jar.verify(a, 0xdead_beef, &c));
        assert!(!jar.verify(addr("198.51.100.8:5000"), 0xdead_beef, &c), "other address");
        assert!(!jar.verify(addr("198.51.100.7:5001"), 0xdead_beef, &c), "other port");
        assert!(!jar.verify(addr("[::ffff:198.51.100.7]:5000"), 0xdead_beef, &c), "mapped form");
        assert!(!jar.verify(a, 0xdead_beee, &c), "other initiator id");
        for i in 0..COOKIE_LEN {
            for bit in 0..8 {
                let mut t = c;
                t[i] ^= 1 << bit;
                assert!(!jar.verify(a, 0xdead_beef, &t), "flipped bit {bit} of byte {i}");
            }
        }
        assert!(!jar.verify(a, 0xdead_beef, &c[..15]), "short");
        assert!(!jar.verify(a, 0xdead_beef, &[c.as_slice(), &[0]].concat()), "long");
        assert!(!jar.verify(a, 0xdead_beef, &[]), "empty");
        let other = CookieJar::new(t0, &mut rng(4));
        assert!(!other.verify(a, 0xdead_beef, &c), "other secret");
    }

    #[test]
    fn cookie_deterministic_for_same_seed() {
        let t0 = Instant::now();
        let a = addr("203.0.113.5:443");
        let j1 = CookieJar::new(t0, &mut rng(9));
        let j2 = CookieJar::new(t0 + ms(5), &mut rng(9));
        assert_eq!(j1.mint(a, 42), j2.mint(a, 42));
        assert_ne!(j1.mint(a, 42), CookieJar::new(t0, &mut rng(10)).mint(a, 42));
    }

    #[test]
    fn cookie_jar_debug_hides_secrets() {
        let jar = CookieJar::new(Instant::now(), &mut rng(5));
        let shown = format!("{jar:?}");
        assert!(shown.contains("redacted"));
        let first = jar.current[0];
        assert!(!shown.contains(&format!("[{first}, ")), "{shown}");
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    fn open_config() -> AdmissionConfig {
        // Global limit far away, so only the per-source bucket matters.
        AdmissionConfig {
            global_per_s: 1_000_000,
            global_burst: 1_000_000,
            per_source_per_s: 20,
            per_source_burst: 10,
            max_sources: 16,
            max_half_open: 256,
        }
    }

    #[test]
    fn per_source_bucket_refills_at_configured_rate() {
        let t0 = Instant::now();
        let mut adm = Admission::new(open_config(), t0);
        let s = addr("192.0.2.1:1000");
        for _ in 0..10 {
            assert_eq!(adm.admit(t0, s, 0, None), Verdict::Accept);
        }
        assert_eq!(adm.admit(t0, s, 0, None), Verdict::Drop);
        // 20/s: one token per 50 ms, not earlier.
        assert_eq!(adm.admit(t0 + ms(49), s, 0, None), Verdict::Drop);
        assert_eq!(adm.admit(t0 + ms(50), s, 0, None), Verdict::Accept);
        assert_eq!(adm.admit(t0 + ms(50), s, 0, None), Verdict::Drop);
        // 500 ms later: 10 tokens would have accrued; the bucket holds at most 10 anyway.
        let t = t0 + ms(50) + Duration::from_secs(10);
        let accepted = (0..30).filter(|_| adm.admit(t, s, 0, None) == Verdict::Accept).count();
        assert_eq!(accepted, 10, "capped at burst");
        // Over one second at steady pace exactly 20 more.
        let accepted = (1..=100).filter(|i| adm.admit(t + ms(10 * i), s, 0, None) == Verdict::Accept).count();
        assert_eq!(accepted, 20);
        let st = adm.stats();
        assert_eq!(st.accepted, 10 + 1 + 10 + 20);
        assert_eq!(st.dropped_rate_limited, 1 + 1 + 1 + 20 + 80);
    }

    #[test]
    fn global_bucket_refills_at_configured_rate() {
        let t0 = Instant::now();
        let config = AdmissionConfig {
            global_per_s: 100,
            global_burst: 10,
            per_source_per_s: 1000,
            per_source_burst: 1000,
            max_sources: 64,
            max_half_open: 256,
        };
        let mut adm = Admission::new(config.clone(), t0);
        // Distinct sources with valid cookies, so neither per-source limits nor the cookie
        // switch interfere.
        let mut n = 0;
        let mut next = || {
            n += 1;
            v4(n, 1)
        };
        let burst = (0..20).filter(|_| adm.admit(t0, next(), 0, Some(true)) == Verdict::Accept).count();
        assert_eq!(burst, 10);
        assert_eq!(adm.admit(t0 + ms(9), next(), 0, Some(true)), Verdict::Drop);
        assert_eq!(adm.admit(t0 + ms(10), next(), 0, Some(true)), Verdict::Accept);
        assert_eq!(adm.admit(t0 + ms(10), next(), 0, Some(true)), Verdict::Drop);
        let t = t0 + Duration::from_secs(5);
        let refilled = (0..20).filter(|_| adm.admit(t, next(), 0, Some(true)) == Verdict::Accept).count();
        assert_eq!(refilled, 10);
    }

    #[test]
    fn spoofed_flood_keeps_table_bounded_and_global_rate() {
        let t0 = Instant::now();
        let config = AdmissionConfig::default();
        let mut adm = Admission::new(config.clone(), t0);
        let total: u32 = 1_000_000;
        let window = Duration::from_secs(10);
        let step = window / total;
        let mut accepted = 0u64;
        for i in 0..total {
            let now = t0 + step * i;
            // Every source distinct, ports random-ish; half claim a valid cookie (a botnet
            // that can receive), half carry none (spoofed).
            let source = v4(0x0a00_0000 + i, (i % 65_000) as u16);
            let cookie = if i % 2 == 0 { Some(true) } else { None };
            if adm.admit(now, source, 0, cookie) == Verdict::Accept {
                accepted += 1;
            }
            assert!(adm.stats().sources_tracked <= config.max_sources);
        }
        let bound = u64::from(config.global_burst) + 10 * u64::from(config.global_per_s);
        assert!(accepted <= bound, "accepted {accepted} > {bound}");
        // The limit is the global rate, not something far stricter.
        assert!(accepted >= 10 * u64::from(config.global_per_s) * 9 / 10, "accepted {accepted}");
        let st = adm.stats();
        assert_eq!(st.accepted, accepted);
        assert_eq!(st.sources_tracked, config.max_sources);
        assert_eq!(st.sources_evicted, u64::from(total) - config.max_sources as u64);
        assert_eq!(adm.lru.len(), adm.sources.len());
        assert!(st.challenged > 0);
    }

    #[test]
    fn under_load_challenges_without_cookie_and_accepts_with_valid_cookie() {
        let t0 = Instant::now();
        let config = AdmissionConfig::default();
        let mut adm = Admission::new(config.clone(), t0);
        let s = addr("192.0.2.10:7000");
        // Too many half-open handshakes: under load.
        assert!(!adm.under_load(t0, config.max_half_open));
        assert!(adm.under_load(t0, config.max_half_open + 1));
        let h = config.max_half_open + 1;
        assert_eq!(adm.admit(t0, s, h, None), Verdict::Challenge);
        assert_eq!(adm.admit(t0, s, h, Some(true)), Verdict::Accept);
        assert_eq!(adm.admit(t0, s, h, Some(false)), Verdict::Drop);
        // Not under load: no cookie needed, and a stale one is ignored.
        assert_eq!(adm.admit(t0, s, 0, None), Verdict::Accept);
        assert_eq!(adm.admit(t0, s, 0, Some(false)), Verdict::Accept);
        let st = adm.stats();
        assert_eq!((st.challenged, st.accepted, st.dropped_bad_cookie), (1, 3, 1));
    }

    #[test]
    fn under_load_when_global_bucket_below_half() {
        let t0 = Instant::now();
        let config = AdmissionConfig { global_burst: 10, global_per_s: 10, ..AdmissionConfig::default() };
        let mut adm = Admission::new(config.clone(), t0);
        for i in 0..5 {
            assert!(!adm.under_load(t0, 0));
            assert_eq!(adm.admit(t0, v4(i, 1), 0, None), Verdict::Accept);
        }
        // 5 of 10 left: exactly half is not below half.
        assert!(!adm.under_load(t0, 0));
        assert_eq!(adm.admit(t0, v4(100, 1), 0, None), Verdict::Accept);
        assert!(adm.under_load(t0, 0));
        assert_eq!(adm.admit(t0, v4(101, 1), 0, None), Verdict::Challenge);
        // Refill to half: 1 token at 10/s takes 100 ms.
        assert!(adm.under_load(t0 + ms(99), 0));
        assert!(!adm.under_load(t0 + ms(100), 0));
    }

    #[test]
    fn challenges_are_rate_limited_per_source() {
        let t0 = Instant::now();
        let config = AdmissionConfig::default();
        let mut adm = Admission::new(config.clone(), t0);
        let victim = addr("192.0.2.99:53");
        let h = config.max_half_open + 1;
        let challenges = (0..100).filter(|_| adm.admit(t0, victim, h, None) == Verdict::Challenge).count();
        assert_eq!(challenges, config.per_source_burst as usize);
        assert_eq!(adm.stats().dropped_challenge_limited, 100 - challenges as u64);
        // Challenges do not spend the source's handshake tokens.
        assert_eq!(adm.admit(t0, victim, h, Some(true)), Verdict::Accept);
        // Another source is unaffected.
        assert_eq!(adm.admit(t0, addr("192.0.2.100:53"), h, None), Verdict::Challenge);
    }

    #[test]
    fn abusive_source_cannot_consume_global_budget() {
        let t0 = Instant::now();
        let config = AdmissionConfig::default();
        let mut adm = Admission::new(config.clone(), t0);
        let abuser = addr("198.51.100.66:1");
        let mut abuser_accepted = 0;
        let mut honest_accepted = 0;
        // One second: the abuser sends 10 000 initiations (with valid cookies, so it is a real
        // address); 100 honest sources send one each, spread through the second.
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(100 * u64::from(i));
            if adm.admit(now, abuser, 0, Some(true)) == Verdict::Accept {
                abuser_accepted += 1;
            }
            if i % 100 == 0 {
                let honest = v4(0xc000_0200 + i, 4000);
                if adm.admit(now, honest, 0, None) == Verdict::Accept {
                    honest_accepted += 1;
                }
            }
        }
        let cap = config.per_source_burst + config.per_source_per_s;
        assert!(abuser_accepted <= cap, "abuser got {abuser_accepted}");
        assert_eq!(honest_accepted, 100);
        assert_eq!(adm.stats().challenged, 0, "the abuser never pushed us under load");
    }

    #[test]
    fn sources_keyed_by_ipv4_address_and_ipv6_64() {
        assert_eq!(SourceKey::of(addr("192.0.2.1:1")), SourceKey::of(addr("192.0.2.1:2")));
        assert_ne!(SourceKey::of(addr("192.0.2.1:1")), SourceKey::of(addr("192.0.2.2:1")));
        assert_eq!(
            SourceKey::of(addr("[2001:db8:1:2::1]:1")),
            SourceKey::of(addr("[2001:db8:1:2:ffff::9]:7"))
        );
        assert_ne!(SourceKey::of(addr("[2001:db8:1:2::1]:1")), SourceKey::of(addr("[2001:db8:1:3::1]:1")));
        assert_eq!(SourceKey::of(addr("[::ffff:192.0.2.1]:1")), SourceKey::of(addr("192.0.2.1:1")));
        assert_ne!(SourceKey::of(addr("[::ffff:192.0.2.1]:1")), SourceKey::of(addr("[::ffff:192.0.2.2]:1")));

        // Hosts in one /64 share a bucket.
        let t0 = Instant::now();
        let mut adm = Admission::new(open_config(), t0);
        for i in 0..10u16 {
            let a = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)), i);
            assert_eq!(adm.admit(t0, a, 0, None), Verdict::Accept);
        }
        assert_eq!(adm.admit(t0, addr("[2001:db8::ffff]:1"), 0, None), Verdict::Drop);
        assert_eq!(adm.admit(t0, addr("[2001:db8:0:1::1]:1"), 0, None), Verdict::Accept);
        assert_eq!(adm.stats().sources_tracked, 2);
    }

    #[test]
    fn eviction_removes_least_recently_used() {
        let t0 = Instant::now();
        let config = AdmissionConfig { max_sources: 3, ..open_config() };
        let mut adm = Admission::new(config.clone(), t0);
        let (a, b, c, d) = (v4(1, 1), v4(2, 1), v4(3, 1), v4(4, 1));
        // Drain a's bucket, then touch b, c, and a again so b is the oldest.
        while adm.admit(t0, a, 0, None) == Verdict::Accept {}
        adm.admit(t0, b, 0, None);
        adm.admit(t0, c, 0, None);
        assert_eq!(adm.admit(t0, a, 0, None), Verdict::Drop);
        adm.admit(t0, d, 0, None);
        let st = adm.stats();
        assert_eq!((st.sources_tracked, st.sources_evicted), (3, 1));
        assert!(!adm.sources.contains_key(&SourceKey::of(b)));
        // a was kept, so its empty bucket was not reset by eviction.
        assert_eq!(adm.admit(t0, a, 0, None), Verdict::Drop);
    }

    #[test]
    fn odd_inputs_never_panic_or_mint_tokens() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        // Zero everywhere: nothing accepted, nothing panics.
        let zero = AdmissionConfig {
            global_per_s: 0,
            global_burst: 0,
            per_source_per_s: 0,
            per_source_burst: 0,
            max_sources: 0,
            max_half_open: 0,
        };
        let mut adm = Admission::new(zero, t0);
        for i in 0..10 {
            assert_ne!(adm.admit(later, v4(i, 1), usize::MAX, None), Verdict::Accept);
            assert_ne!(adm.admit(later, v4(i, 1), 0, Some(true)), Verdict::Accept);
        }
        assert_eq!(adm.stats().sources_tracked, 1);

        // Maximal rates: no overflow.
        let max = AdmissionConfig {
            global_per_s: u32::MAX,
            global_burst: u32::MAX,
            per_source_per_s: u32::MAX,
            per_source_burst: u32::MAX,
            max_sources: usize::MAX,
            max_half_open: usize::MAX,
        };
        let mut adm = Admission::new(max, t0);
        assert_eq!(adm.admit(later + Duration::from_secs(1 << 40), v4(1, 1), 0, None), Verdict::Accept);

        // Time going backwards refills nothing.
        let mut adm = Admission::new(open_config(), later);
        let s = v4(9, 9);
        while adm.admit(later, s, 0, None) == Verdict::Accept {}
        assert_eq!(adm.admit(t0, s, 0, None), Verdict::Drop);
        assert_eq!(adm.admit(later, s, 0, None), Verdict::Drop);
        assert_eq!(adm.admit(later + ms(50), s, 0, None), Verdict::Accept);
    }
}
