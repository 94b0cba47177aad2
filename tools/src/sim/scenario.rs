//! Scenario files of `rill sim`: TOML, every key optional, unknown keys refused.
//!
//! ```toml
//! [stream]
//! bitrate_kbps = 4000          # media bitrate
//! duration_s = 60.0            # how long the publisher publishes (the run's length)
//! keyframe_interval_s = 1.0    # the first chunk of each interval carries the keyframe flag
//! chunk_ms = 25                # the publisher cuts a chunk every chunk_ms
//!
//! [swarm]
//! viewers = 10000              # viewers at the start (they join over join_over_s)
//! relays = 0                   # always-on relays, joined at t = 0 before any viewer
//! publisher_upload_kbps = 20000
//! viewer_upload_kbps = { min = 2000, max = 12000 }   # uniform per viewer; a number = fixed
//! relay_upload_kbps = 200000
//! viewer_download_kbps = 100000  # download cap of every node
//! stripes = 4
//! mesh_size = 8
//! bootstrap = 4                # peers a joiner is given: publisher, relays, earlier joiners
//! join_over_s = 5.0            # initial viewers join uniformly over this many seconds
//!
//! [network]
//! one_way_delay_ms = { min = 10, max = 50 }  # uniform per unordered pair of nodes
//! loss = 0.0                   # independent loss probability of each packet
//!
//! [churn]
//! leave_per_min = 0.0          # each viewer leaves at this rate (per minute), replaced at once
//! mass_departure = { at_s = 30.0, fraction = 0.3 }   # optional: a share leaves at once
//!
//! [playout]
//! latency_ms = 1000            # playout deadline = ingest + latency
//!
//! [run]
//! seed = 1
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use anyhow::{bail, Context};
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub stream: Stream,
    pub swarm: Swarm,
    pub network: Network,
    pub churn: Churn,
    pub playout: Playout,
    pub run: Run,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stream {
    /// Media bitrate, kbit/s. Default 4000 (the issue's 4 Mbit/s stream).
    pub bitrate_kbps: u32,
    /// Seconds the publisher publishes; the run ends then. Default 60.
    pub duration_s: f64,
    /// Seconds between keyframes. Default 1.0.
    pub keyframe_interval_s: f64,
    /// Milliseconds of media per chunk. Default 25: a node forwards whole verified chunks,
    /// one copy per child after another, so every hop costs up to `children × chunk / upload`;
    /// 25 ms (12.5 kB at 4 Mbit/s) halves that against 50 ms at 0.5 % signature overhead.
    /// (2,000 viewers, 20 s: continuity 0.81 at 50 ms, 0.92 at 25 ms.)
    pub chunk_ms: u32,
}

impl Default for Stream {
    fn default() -> Self {
        Stream { bitrate_kbps: 4000, duration_s: 60.0, keyframe_interval_s: 1.0, chunk_ms: 25 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Swarm {
    /// Viewers at the start. Default 10000.
    pub viewers: u32,
    /// Relays. Default 0.
    pub relays: u32,
    /// Publisher upload, kbit/s. Default 20000.
    pub publisher_upload_kbps: u32,
    /// Viewer upload, kbit/s, uniform per viewer. Default {min = 2000, max = 12000}.
    pub viewer_upload_kbps: RangeSpec<u32>,
    /// Relay upload, kbit/s. Default 200000.
    pub relay_upload_kbps: u32,
    /// Download cap of every node, kbit/s. Default 100000.
    pub viewer_download_kbps: u32,
    /// Stripes (push trees). Default 4.
    pub stripes: u8,
    /// Mesh neighbours per node. Default 8.
    pub mesh_size: usize,
    /// Bootstrap peers a joiner is given. Default 4.
    pub bootstrap: usize,
    /// Initial viewers join uniformly over this many seconds. Default 5.0.
    pub join_over_s: f64,
}

impl Default for Swarm {
    fn default() -> Self {
        Swarm {
            viewers: 10_000,
            relays: 0,
            publisher_upload_kbps: 20_000,
            viewer_upload_kbps: RangeSpec::default(),
            relay_upload_kbps: 200_000,
            viewer_download_kbps: 100_000,
            stripes: 4,
            mesh_size: 8,
            bootstrap: 4,
            join_over_s: 5.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way propagation delay, ms, uniform per unordered pair. Default {min = 10, max = 50}.
    pub one_way_delay_ms: RangeSpec<f64>,
    /// Loss probability of each packet, in [0, 1). Default 0.
    pub loss: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network { one_way_delay_ms: RangeSpec::default(), loss: 0.0 }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Departures per viewer per minute (a Poisson process; each departed viewer is
    /// replaced by a new one at once). Default 0.
    pub leave_per_min: f64,
    /// A share of the viewers leaving at one instant, not replaced. Default none.
    pub mass_departure: Option<MassDeparture>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MassDeparture {
    /// When, seconds from the start.
    pub at_s: f64,
    /// Share of the viewers present then that leave, in [0, 1].
    pub fraction: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Playout {
    /// Playout deadline after ingest, ms. Default 1000.
    pub latency_ms: u32,
}

impl Default for Playout {
    fn default() -> Self {
        Playout { latency_ms: 1000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Run {
    /// Seed of every random choice of the run (`--seed` overrides it). Default 1.
    pub seed: u64,
}

impl Default for Run {
    fn default() -> Self {
        Run { seed: 1 }
    }
}

/// A `{min, max}` range as written; either bound may be left out (it keeps its default),
/// and a plain number means min = max = that number.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RangeSpec<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T: Copy> RangeSpec<T> {
    fn resolve(&self, default: (T, T)) -> (T, T) {
        (self.min.unwrap_or(default.0), self.max.unwrap_or(default.1))
    }
}

/// Default viewer upload range, kbit/s: the issue's spread of home uplinks.
pub const DEFAULT_VIEWER_UPLOAD_KBPS: (u32, u32) = (2000, 12_000);
/// Default one-way delay range, ms: the issue's spread (same metro to cross-continent).
pub const DEFAULT_ONE_WAY_DELAY_MS: (f64, f64) = (10.0, 50.0);

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario file {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        // toml's errors name the line and column, and the key for unknown fields.
        let scenario: Scenario =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn viewer_upload_kbps(&self) -> (u32, u32) {
        self.swarm.viewer_upload_kbps.resolve(DEFAULT_VIEWER_UPLOAD_KBPS)
    }

    pub fn one_way_delay_ms(&self) -> (f64, f64) {
        self.network.one_way_delay_ms.resolve(DEFAULT_ONE_WAY_DELAY_MS)
    }

    /// Bytes of media in one chunk: bitrate × chunk duration.
    pub fn chunk_bytes(&self) -> usize {
        (u64::from(self.stream.bitrate_kbps) * u64::from(self.stream.chunk_ms) / 8) as usize
    }

    /// Chunks the publisher cuts in the run (whole chunks only).
    pub fn chunks(&self) -> u64 {
        (self.stream.duration_s * 1000.0 / f64::from(self.stream.chunk_ms)).floor() as u64
    }

    fn validate(&self) -> anyhow::Result<()> {
        let st = &self.stream;
        positive_int("[stream] bitrate_kbps", st.bitrate_kbps)?;
        positive_int("[stream] chunk_ms", st.chunk_ms)?;
        positive("[stream] duration_s", st.duration_s)?;
        positive("[stream] keyframe_interval_s", st.keyframe_interval_s)?;
        if self.chunk_bytes() == 0 {
            bail!("[stream] bitrate_kbps × chunk_ms is less than one byte per chunk");
        }
        if self.chunks() == 0 {
            bail!("[stream] duration_s {} is shorter than one chunk ({} ms)", st.duration_s, st.chunk_ms);
        }
        let sw = &self.swarm;
        positive_int("[swarm] viewers", sw.viewers)?;
        positive_int("[swarm] publisher_upload_kbps", sw.publisher_upload_kbps)?;
        positive_int("[swarm] relay_upload_kbps", sw.relay_upload_kbps)?;
        positive_int("[swarm] viewer_download_kbps", sw.viewer_download_kbps)?;
        positive_int("[swarm] stripes", u32::from(sw.stripes))?;
        positive_int("[swarm] bootstrap", sw.bootstrap as u32)?;
        let (lo, hi) = self.viewer_upload_kbps();
        positive_int("[swarm] viewer_upload_kbps.min", lo)?;
        if lo > hi {
            bail!("[swarm] viewer_upload_kbps: min {lo} > max {hi}");
        }
        non_negative("[swarm] join_over_s", sw.join_over_s)?;
        let (lo, hi) = self.one_way_delay_ms();
        non_negative("[network] one_way_delay_ms.min", lo)?;
        non_negative("[network] one_way_delay_ms.max", hi)?;
        if lo > hi {
            bail!("[network] one_way_delay_ms: min {lo} > max {hi}");
        }
        let loss = self.network.loss;
        // At 1 nothing ever arrives and retransmission would never end.
        if !(0.0..1.0).contains(&loss) {
            bail!("[network] loss must be in [0, 1), got {loss}");
        }
        non_negative("[churn] leave_per_min", self.churn.leave_per_min)?;
        if let Some(m) = &self.churn.mass_departure {
            non_negative("[churn] mass_departure.at_s", m.at_s)?;
            if !(0.0..=1.0).contains(&m.fraction) {
                bail!("[churn] mass_departure.fraction must be in [0, 1], got {}", m.fraction);
            }
        }
        positive_int("[playout] latency_ms", self.playout.latency_ms)?;
        Ok(())
    }
}

fn positive_int(name: &str, v: u32) -> anyhow::Result<()> {
    if v == 0 {
        bail!("{name} must be at least 1, got 0");
    }
    Ok(())
}

fn positive(name: &str, v: f64) -> anyhow::Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{name} must be a positive number, got {v}");
    }
    Ok(())
}

fn non_negative(name: &str, v: f64) -> anyhow::Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{name} must be zero or positive, got {v}");
    }
    Ok(())
}

/// Accepts `{min = a, max = b}` (either optional, nothing else) or a plain number.
impl<'de, T: Deserialize<'de> + Copy> Deserialize<'de> for RangeSpec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);

        impl<T> V<T> {
            fn fixed<'de, E: de::Error>(&self, v: impl IntoDeserializer<'de, E>) -> Result<RangeSpec<T>, E>
            where
                T: Deserialize<'de> + Copy,
            {
                let x = T::deserialize(v.into_deserializer())?;
                Ok(RangeSpec { min: Some(x), max: Some(x) })
            }
        }

        impl<'de, T: Deserialize<'de> + Copy> Visitor<'de> for V<T> {
            type Value = RangeSpec<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a table { min = …, max = … }")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.fixed(v)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.fixed(v)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.fixed(v)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = RangeSpec { min: None, max: None };
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "min" => &mut out.min,
                        "max" => &mut out.max,
                        other => return Err(de::Error::unknown_field(other, &["min", "max"])),
                    };
                    if slot.is_some() {
                        return Err(de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(out)
            }
        }

        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", Scenario::parse(text).unwrap_err())
    }

    #[test]
    fn empty_file_is_the_default_scenario() {
        let s = Scenario::parse("").unwrap();
        assert_eq!(s.stream.bitrate_kbps, 4000);
        assert_eq!(s.stream.duration_s, 60.0);
        assert_eq!(s.stream.keyframe_interval_s, 1.0);
        assert_eq!(s.stream.chunk_ms, 25);
        assert_eq!(s.swarm.viewers, 10_000);
        assert_eq!(s.swarm.relays, 0);
        assert_eq!(s.swarm.publisher_upload_kbps, 20_000);
        assert_eq!(s.viewer_upload_kbps(), (2000, 12_000));
        assert_eq!(s.swarm.relay_upload_kbps, 200_000);
        assert_eq!(s.swarm.viewer_download_kbps, 100_000);
        assert_eq!((s.swarm.stripes, s.swarm.mesh_size, s.swarm.bootstrap), (4, 8, 4));
        assert_eq!(s.swarm.join_over_s, 5.0);
        assert_eq!(s.one_way_delay_ms(), (10.0, 50.0));
        assert_eq!(s.network.loss, 0.0);
        assert_eq!(s.churn.leave_per_min, 0.0);
        assert!(s.churn.mass_departure.is_none());
        assert_eq!(s.playout.latency_ms, 1000);
        assert_eq!(s.run.seed, 1);
        // 4000 kbit/s × 25 ms = 12 500 bytes; 60 s / 25 ms = 2400 chunks.
        assert_eq!(s.chunk_bytes(), 12_500);
        assert_eq!(s.chunks(), 2400);
    }

    #[test]
    fn partial_tables_and_ranges() {
        let s = Scenario::parse(
            "[swarm]\nviewers = 3\nviewer_upload_kbps = { min = 3000 }\n[network]\none_way_delay_ms = 20\n\
             [churn]\nmass_departure = { at_s = 30, fraction = 0.3 }\n",
        )
        .unwrap();
        assert_eq!(s.swarm.viewers, 3);
        assert_eq!(s.swarm.stripes, 4);
        assert_eq!(s.viewer_upload_kbps(), (3000, 12_000));
        assert_eq!(s.one_way_delay_ms(), (20.0, 20.0));
        let m = s.churn.mass_departure.unwrap();
        assert_eq!((m.at_s, m.fraction), (30.0, 0.3));
        // Integers are taken where floats are expected.
        assert_eq!(Scenario::parse("[stream]\nduration_s = 20").unwrap().stream.duration_s, 20.0);
    }

    #[test]
    fn missing_file() {
        let e = format!("{:#}", Scenario::load(Path::new("/nonexistent/x.toml")).unwrap_err());
        assert!(e.contains("cannot read scenario file /nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = err("[stream]\nbitrate_kbps = 4000\nduration_s = = 3\n");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_keys_refused() {
        let e = err("[stream]\nbitrate = 4000\n");
        assert!(e.contains("unknown field `bitrate`") && e.contains("line 2"), "{e}");
        let e = err("[swarms]\n");
        assert!(e.contains("unknown field `swarms`"), "{e}");
        let e = err("[swarm]\nviewer_upload_kbps = { min = 1, mean = 3 }\n");
        assert!(e.contains("unknown field `mean`"), "{e}");
        let e = err("[churn]\nmass_departure = { at_s = 1, fraction = 0.5, when = 2 }\n");
        assert!(e.contains("unknown field `when`"), "{e}");
    }

    #[test]
    fn min_above_max_refused() {
        let e = err("[swarm]\nviewer_upload_kbps = { min = 5000, max = 1000 }\n");
        assert!(e.contains("viewer_upload_kbps: min 5000 > max 1000"), "{e}");
        // A bound left out keeps its default, and the pair is still checked.
        let e = err("[network]\none_way_delay_ms = { min = 80 }\n");
        assert!(e.contains("one_way_delay_ms: min 80 > max 50"), "{e}");
    }

    #[test]
    fn zero_and_negative_refused() {
        let e = err("[stream]\nbitrate_kbps = 0\n");
        assert!(e.contains("bitrate_kbps must be at least 1"), "{e}");
        let e = err("[swarm]\nviewers = -5\n");
        assert!(e.contains("-5") && e.contains("line 2"), "{e}");
        let e = err("[stream]\nduration_s = -1.0\n");
        assert!(e.contains("duration_s must be a positive number"), "{e}");
        let e = err("[network]\none_way_delay_ms = { min = -1, max = 5 }\n");
        assert!(e.contains("one_way_delay_ms.min must be zero or positive"), "{e}");
        let e = err("[churn]\nleave_per_min = -0.1\n");
        assert!(e.contains("leave_per_min must be zero or positive"), "{e}");
        let e = err("[playout]\nlatency_ms = 0\n");
        assert!(e.contains("latency_ms must be at least 1"), "{e}");
        let e = err("[stream]\nduration_s = 0.01\n");
        assert!(e.contains("shorter than one chunk"), "{e}");
    }

    #[test]
    fn fractions_outside_the_unit_interval_refused() {
        let e = err("[network]\nloss = 1.5\n");
        assert!(e.contains("loss must be in [0, 1)"), "{e}");
        let e = err("[network]\nloss = 1.0\n");
        assert!(e.contains("loss must be in [0, 1)"), "{e}");
        let e = err("[churn]\nmass_departure = { at_s = 1, fraction = 2 }\n");
        assert!(e.contains("fraction must be in [0, 1]"), "{e}");
        let e = err("[churn]\nmass_departure = { fraction = 0.5 }\n");
        assert!(e.contains("missing field `at_s`"), "{e}");
    }

    #[test]
    fn wrong_types_refused() {
        let e = err("[swarm]\nviewers = \"many\"\n");
        assert!(e.contains("invalid type") && e.contains("line 2"), "{e}");
        let e = err("[swarm]\nviewer_upload_kbps = \"fast\"\n");
        assert!(e.contains("a number or a table"), "{e}");
    }
}
