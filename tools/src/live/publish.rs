//! `rill publish --key FILE [--input SRC]`: read MPEG-TS, cut it into chunks, sign them
//! with the channel key and serve them to the swarm. Prints the channel link.
//!
//! Two tasks: the ingest (input → chunker → signer, this file) and the node (`node.rs`).
//! Chunks carry the UNIX time of their last byte's arrival (`ingest_us`), from which every
//! viewer computes arrival and playout lag.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use rill_publisher::chunker::{Chunker, ChunkerConfig, ChunkerStats};
use rill_publisher::{Input, InputOptions, InputSpec};
use rill_swarm::chunk::{ChannelKey, Chunk};
use rill_swarm::node::Role;
use tokio::sync::mpsc;

use super::channel_key;
use super::common::{self, NodeArgs};
use super::link::{ChannelLink, DEFAULT_KBPS, MAX_STRIPES};
use super::node::{unix_now_us, LiveNode, NodeOptions, NodeSnapshot};

/// The built-in sample channel: 10 s of test pattern with a running clock, H.264 + AAC,
/// one keyframe a second (tools/assets/make-sample.sh makes it).
pub const SAMPLE_TS: &[u8] = include_bytes!("../../assets/sample.ts");

/// The built-in sample as an input.
pub fn sample_spec() -> InputSpec {
    InputSpec::Memory { name: "the built-in sample", bytes: Bytes::from_static(SAMPLE_TS) }
}

/// Signed chunks queued between the ingest and the node: 256 chunks, 6 s at 25 ms. The
/// node takes them as fast as they come; the bound only matters if it stalls.
const CHUNK_QUEUE: usize = 256;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The channel key (made by `rill keygen --out FILE`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// What to publish: `-` (stdin), a file, or udp://HOST:PORT (what `ffmpeg -f mpegts
    /// udp://…` and OBS send). Default: the built-in sample, looped.
    #[arg(short = 'i', long, value_name = "SRC")]
    pub input: Option<String>,
    /// Play a file input again and again as a live channel (timestamps stay continuous).
    #[arg(long = "loop")]
    pub loop_input: bool,
    /// Private channel: the link carries a secret without which no node can join.
    #[arg(long)]
    pub private: bool,
    /// This node's key file (its id is in the link, so keep it across restarts). Default:
    /// $XDG_CONFIG_HOME/rill/node.key, created on first start.
    #[arg(long, value_name = "FILE")]
    pub node_key: Option<PathBuf>,
    /// Stripes (push trees) the stream is split into.
    #[arg(long, default_value_t = super::link::DEFAULT_STRIPES)]
    pub stripes: u8,
    /// The stream's nominal bitrate in kbit/s, for the link (it sizes peers' fan-out) and
    /// the largest chunk (twice an average 25 ms chunk, so bursts such as keyframes travel in
    /// pieces).
    /// Default: 1000 for the built-in sample, else 4000; give the real rate when you know
    /// it, as a higher figure makes nodes take fewer children than they could.
    #[arg(long, value_name = "KBPS")]
    pub kbps: Option<u32>,
    /// Also write the channel link to FILE.
    #[arg(long, value_name = "FILE")]
    pub link_file: Option<PathBuf>,
    /// Seconds to wait after start before reading the input, so viewers started with the
    /// link can join before the first chunk (for premieres and tests).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub start_delay: f64,
    /// After a finite input ends, keep serving this many seconds so viewers get the end.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub linger: f64,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Where the ingest stands, for status and `--stats-json`.
#[derive(Debug, Clone, Default)]
pub struct IngestSnapshot {
    pub chunker: ChunkerStats,
    pub chunks_signed: u64,
}

impl IngestSnapshot {
    /// JSON figures (METRICS.md names): media bytes is the denominator of overhead ratio
    /// and publisher upload.
    pub fn json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("media_bytes".into(), self.chunker.media_bytes.into());
        m.insert("chunks_signed".into(), self.chunks_signed.into());
        m
    }
}

/// Largest chunk, in chunks of average size at the nominal bitrate: a burst of input
/// several times the average (a keyframe read at once) is cut into pieces on consecutive
/// stripes, so that each hop forwards them through different parents at once, and a hop's
/// store-and-forward wait (chunk size × children ÷ upload) stays near that of an ordinary
/// chunk instead of growing with the burst. Measured with `rill testbed swarm --nodes 30 --duration 30` on the built-in
/// sample (12.7 kB keyframes, 2 kB average chunks), same machine, back to back:
/// unsplit, arrival lag p99 852 ms, continuity 0.9913, duplicate ratio 0.164; ×3, 438 ms,
/// 0.9978, 0.040 (a second run: 487 ms, 0.9954, 0.043); ×2, 426 ms, 0.9977, 0.020.
pub const MAX_CHUNK_AVERAGES: u64 = 2;

/// The chunker's settings for a stream of `kbps`: 25 ms chunks, at most
/// [`MAX_CHUNK_AVERAGES`] average chunks long (clamped by the chunker to 16 TS packets at least).
pub fn chunker_config(kbps: u32) -> ChunkerConfig {
    let defaults = ChunkerConfig::default();
    let average = u64::from(kbps) * 1000 / 8 * defaults.target_duration.as_millis() as u64 / 1000;
    let max_chunk_bytes = (average * MAX_CHUNK_AVERAGES).min(defaults.max_chunk_bytes as u64) as usize;
    ChunkerConfig { max_chunk_bytes, ..defaults }
}

/// Read `input`, chunk and sign it, and send the chunks to the node. Returns at the end
/// of a finite input.
pub async fn ingest(
    mut input: Input,
    key: ChannelKey,
    stripes: u8,
    kbps: u32,
    chunks: mpsc::Sender<Chunk>,
    figures: Arc<Mutex<IngestSnapshot>>,
) -> Result<()> {
    let mut chunker = Chunker::new(chunker_config(kbps));
    // Instants map to UNIX time through one reading of both clocks: ingest timestamps then
    // advance with the monotonic clock, immune to wall-clock steps during the broadcast.
    let (epoch, epoch_us) = (Instant::now(), unix_now_us());
    let to_unix_us = |t: Instant| epoch_us + t.saturating_duration_since(epoch).as_micros() as u64;
    let mut seq = 0u64;
    let mut snapshot = IngestSnapshot::default();
    loop {
        let timeout = chunker.poll_timeout();
        let ended = tokio::select! {
            read = input.read() => match read.context("reading the input")? {
                Some((at, bytes)) => {
                    chunker.push(at, &bytes)?;
                    false
                }
                None => {
                    chunker.finish(Instant::now());
                    if chunker.stats().packets == 0 {
                        bail!("{} holds no MPEG-TS packets", input.spec());
                    }
                    true
                }
            },
            _ = async { match timeout { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => {
                chunker.handle_timeout(Instant::now());
                false
            }
        };
        while let Some(media) = chunker.poll_chunk() {
            let chunk =
                Chunk::sign(&key, seq, to_unix_us(media.ingested_at), media.keyframe, stripes, media.payload)
                    .context("signing a chunk")?;
            seq += 1;
            snapshot.chunks_signed += 1;
            if chunks.send(chunk).await.is_err() {
                return Ok(());
            }
        }
        snapshot.chunker = chunker.stats();
        *figures.lock().unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
        if ended {
            return Ok(());
        }
    }
}

pub fn run(args: &PublishArgs) -> Result<std::process::ExitCode> {
    if args.stripes == 0 || args.stripes > MAX_STRIPES {
        bail!("--stripes must be 1 to {MAX_STRIPES}");
    }
    if !(0.0..=3600.0).contains(&args.start_delay) || !(0.0..=3600.0).contains(&args.linger) {
        bail!("--start-delay and --linger must be 0 to 3600 seconds");
    }
    let key = channel_key::load(&args.key)?;
    let spec = match &args.input {
        Some(text) => InputSpec::parse(text).with_context(|| format!("bad --input {text}"))?,
        None => sample_spec(),
    };
    let loop_input = args.loop_input || args.input.is_none();
    if loop_input && !spec.is_loopable() {
        bail!("--loop needs a file input (stdin and udp:// are live already)");
    }
    let node_key = crate::node_key::load_or_create(args.node_key.as_deref())?;
    let kbps = args.kbps.unwrap_or(if args.input.is_none() { 1000 } else { DEFAULT_KBPS });
    let psk = args.private.then(|| channel_key::private_psk(&key));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = common::shutdown_signal();
        let opts = NodeOptions {
            role: Role::Publisher,
            listen: args.node.listen,
            advertise: args.node.advertise,
            node_key: node_key.clone(),
            channel: key.channel_id(),
            bootstrap: Vec::new(),
            stripes: args.stripes,
            stream_kbps: kbps,
            upload_kbps: args.node.upload_kbps.unwrap_or(kbps.saturating_mul(6)),
            psk,
            seed: common::random_seed(),
        };
        let node = LiveNode::bind(&opts)?;
        let link = ChannelLink {
            channel: key.channel_id(),
            peers: vec![(node_key.id(), node.local_addr())],
            stripes: args.stripes,
            kbps,
            psk,
        };
        println!("{link}");
        if let Some(path) = &args.link_file {
            std::fs::write(path, format!("{link}\n")).with_context(|| format!("cannot write {}", path.display()))?;
        }
        eprintln!("rill: publishing {spec} as channel {}", key.channel_id());
        let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
        let node_figures = Arc::new(Mutex::new(NodeSnapshot::default()));
        let ingest_figures = Arc::new(Mutex::new(IngestSnapshot::default()));
        let linger = Duration::from_secs_f64(args.linger);
        let mut node_task =
            tokio::spawn(node.run(Some(chunk_rx), None, node_figures.clone(), stop_rx.clone(), linger));
        let start_delay = Duration::from_secs_f64(args.start_delay);
        let stripes = args.stripes;
        let ingest_task = tokio::spawn({
            let figures = ingest_figures.clone();
            let mut stop = stop_rx.clone();
            let spec = spec.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(start_delay) => {}
                    _ = stop.changed() => return Ok(()),
                }
                // Opened only after the delay: a file is paced from the moment it is
                // opened, so opening it first would release the delay's worth of stream
                // in one burst when the delay ends.
                let options = InputOptions { loop_forever: loop_input, ..InputOptions::default() };
                let input =
                    rill_publisher::open(&spec, &options).await.with_context(|| format!("cannot open input {spec}"))?;
                ingest(input, key, stripes, kbps, chunk_tx, figures).await
            }
        });
        let reporter = common::report_loop(
            "publish",
            node_figures.clone(),
            None,
            Some(ingest_figures.clone()),
            args.node.stats_json.clone(),
            args.node.quiet,
            stop_rx.clone(),
        );
        tokio::pin!(reporter);
        let mut ingest_task = Some(ingest_task);
        let mut node_result = None;
        // Until Ctrl-C, or the node stops (a finite input ended and the linger passed), or
        // the input fails (its error ends the command).
        loop {
            tokio::select! {
                r = &mut reporter => {
                    r?;
                    break;
                }
                r = &mut node_task => {
                    node_result = Some(r);
                    break;
                }
                r = async { match ingest_task.as_mut() { Some(t) => t.await, None => std::future::pending().await } } => {
                    ingest_task = None;
                    r.context("ingest task")??;
                }
            }
        }
        let _ = stop_tx.send(true);
        let node_result = match node_result {
            Some(r) => r,
            None => node_task.await,
        };
        node_result.context("node task")??;
        if let Some(t) = ingest_task {
            t.abort();
        }
        let stats = ingest_figures.lock().map(|s| s.clone()).unwrap_or_default();
        let c = &stats.chunker;
        eprintln!(
            "rill: published {} chunks ({} media bytes); resyncs {}, bytes skipped {}",
            stats.chunks_signed, c.media_bytes, c.resyncs, c.bytes_skipped
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_publisher::chunker::DEFAULT_MAX_CHUNK_BYTES;

    #[test]
    fn chunks_are_capped_at_twice_the_average_and_never_above_the_chunker_default() {
        // 4 Mbit/s: 12.5 kB per 25 ms on average.
        assert_eq!(chunker_config(4000).max_chunk_bytes, 25_000);
        assert_eq!(chunker_config(1_000_000).max_chunk_bytes, DEFAULT_MAX_CHUNK_BYTES);
        assert_eq!(chunker_config(4000).target_duration, ChunkerConfig::default().target_duration);
    }

    #[test]
    fn a_burst_of_input_is_cut_at_the_cap_with_the_bytes_unchanged() {
        let sample = include_bytes!("../../assets/sample.ts");
        // The sample's rate (tools/assets/make-sample.sh), as `rill testbed swarm` announces it.
        let config = chunker_config(645);
        let max = config.max_chunk_bytes;
        let mut chunker = Chunker::new(config);
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut chunks = Vec::new();
        // 40 packets every 10 ms, six times the sample's rate: bursts, as a read of
        // buffered input gives, so chunks are cut by size rather than by their 25 ms.
        for (i, piece) in sample.chunks(188 * 40).enumerate() {
            chunker.push(t0 + Duration::from_millis(10 * i as u64), piece).unwrap();
            while let Some(c) = chunker.poll_chunk() {
                chunks.push(c);
            }
        }
        chunker.finish(t0 + Duration::from_secs(60));
        while let Some(c) = chunker.poll_chunk() {
            chunks.push(c);
        }
        for c in &chunks {
            assert!(c.payload.len() <= max, "a {} B chunk above the {max} B cap", c.payload.len());
            out.extend_from_slice(&c.payload);
        }
        assert!(out == sample[..], "chunking changed the bytes");
        // Every keyframe (12.7 kB, three times the cap) starts a chunk that is cut at the
        // cap, the rest of the keyframe following in the next chunks.
        let keyframes = chunks.iter().filter(|c| c.keyframe).count();
        assert!(keyframes >= 9, "{keyframes} keyframe chunks in the 10 s sample");
        let full_after_keyframe =
            chunks.windows(2).filter(|w| w[0].keyframe && w[0].payload.len() + 188 > max).count();
        assert_eq!(full_after_keyframe, keyframes, "every keyframe chunk was cut at the cap");
    }
}
