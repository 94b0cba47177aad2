//! Driver tests over real loopback sockets. The batch-layer tests feed the driver from a
//! closure instead of an endpoint; the last ones run two endpoints end to end.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::endpoint::{Class, Event, SendOptions};
use crate::EndpointConfig;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Send path variants: GSO + sendmmsg, sendmmsg, GSO one message per call, plain send_to.
fn send_variants() -> Vec<SocketOptions> {
    let base = SocketOptions { gro: false, ..SocketOptions::default() };
    vec![
        base.clone(),
        SocketOptions { gso: false, ..base.clone() },
        SocketOptions { batch: false, ..base.clone() },
        SocketOptions { gso: false, batch: false, ..base },
    ]
}

/// Receive path variants: recvmmsg + GRO, recvmmsg, plain recv_from.
fn receive_variants() -> Vec<SocketOptions> {
    let base = SocketOptions { gso: false, ..SocketOptions::default() };
    vec![
        base.clone(),
        SocketOptions { gro: false, ..base.clone() },
        SocketOptions { gro: false, batch: false, ..base },
    ]
}

/// Datagram `i` of the payload test: runs of nine equal sizes then an odd one (shorter
/// or longer), in stretches of 20 to one receiver or the other, so that GSO runs split on
/// size and on destination. Carries its index and a pattern derived from it.
fn test_datagram(i: u64) -> (usize, Vec<u8>) {
    let size = if i % 10 == 9 { 8 + (i as usize * 37) % 1192 } else { 1200 - (i as usize / 10 % 5) * 100 };
    let mut data: Vec<u8> = (0..size).map(|j| (i as usize * 31 + j) as u8).collect();
    data[..8].copy_from_slice(&i.to_be_bytes());
    let receiver = (i / 20 % 3 == 2) as usize;
    (receiver, data)
}

/// Push `count` test datagrams from `tx` to two receivers, at most `window` ahead of what
/// has arrived (so that small default socket buffers do not overflow), and return what
/// each receiver got, by index.
async fn transfer(
    tx: &mut UdpDriver,
    rx: &mut [UdpDriver; 2],
    count: u64,
    window: u64,
) -> [HashMap<u64, Vec<u8>>; 2] {
    let destinations = [rx[0].local_addr().unwrap(), rx[1].local_addr().unwrap()];
    let mut got: [HashMap<u64, Vec<u8>>; 2] = Default::default();
    let mut duplicates = 0;
    let mut next = 0u64;
    let [rx0, rx1] = rx;
    while ((got[0].len() + got[1].len()) as u64) < count {
        let limit = ((got[0].len() + got[1].len()) as u64 + window).min(count);
        tx.flush_with(1200, |_, buf| {
            if next >= limit {
                return None;
            }
            let (receiver, data) = test_datagram(next);
            buf[..data.len()].copy_from_slice(&data);
            next += 1;
            Some(Transmit { destination: destinations[receiver], size: data.len() })
        })
        .unwrap();
        let (mut in0, mut in1) = (Vec::new(), Vec::new());
        let pending = tx.has_pending();
        tokio::select! {
            r = tx.wait_writable(), if pending => r.unwrap(),
            r = rx0.wait_receive(|_, _, d| in0.push(d.to_vec())) => { r.unwrap(); }
            r = rx1.wait_receive(|_, _, d| in1.push(d.to_vec())) => { r.unwrap(); }
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                panic!("stalled: sent {next}, received {}+{}", got[0].len(), got[1].len())
            }
        }
        for (map, arrived) in got.iter_mut().zip([in0, in1]) {
            for d in arrived {
                let i = u64::from_be_bytes(d[..8].try_into().unwrap());
                duplicates += map.insert(i, d).is_some() as u32;
            }
        }
    }
    assert_eq!(duplicates, 0, "a datagram arrived twice");
    got
}

fn check_payloads(got: &[HashMap<u64, Vec<u8>>; 2], count: u64, what: &str) {
    for i in 0..count {
        let (receiver, data) = test_datagram(i);
        assert_eq!(got[receiver].get(&i), Some(&data), "{what}: datagram {i} at receiver {receiver}");
    }
    assert_eq!((got[0].len() + got[1].len()) as u64, count, "{what}: count");
}

#[tokio::test]
async fn batched_send_and_receive_deliver_every_payload_intact() {
    const COUNT: u64 = 1000;
    for tx_opts in send_variants() {
        for rx_opts in receive_variants() {
            let what = format!("send {tx_opts:?} / receive {rx_opts:?}");
            let mut tx = UdpDriver::bind(localhost(), &tx_opts).unwrap();
            let mut rx = [
                UdpDriver::bind(localhost(), &rx_opts).unwrap(),
                UdpDriver::bind(localhost(), &rx_opts).unwrap(),
            ];
            let got = transfer(&mut tx, &mut rx, COUNT, 256).await;
            check_payloads(&got, COUNT, &what);
            let (st, report) = (tx.stats(), tx.socket_report());
            assert_eq!(st.datagrams_sent, COUNT, "{what}");
            assert_eq!(st.send_errors + st.gso_fallbacks, 0, "{what}");
            assert_eq!(rx[0].stats().datagrams_received + rx[1].stats().datagrams_received, COUNT, "{what}");
            if report.gso_enabled {
                assert!(st.gso_segments > COUNT / 2, "{what}: most datagrams went in GSO runs: {st:?}");
            } else {
                assert_eq!(st.gso_segments, 0, "{what}");
            }
            if report.batched {
                assert!(st.send_syscalls < COUNT / 4, "{what}: batched sends: {st:?}");
            } else if !report.gso_enabled {
                assert_eq!(st.send_syscalls, COUNT, "{what}: one datagram per call");
            }
            if report.gso_enabled && rx[0].socket_report().gro_enabled {
                // On loopback a GSO message reaches a GRO socket whole.
                assert!(rx[0].stats().gro_segments > 0, "{what}: GRO trains were split: {:?}", rx[0].stats());
            }
        }
    }
}

/// SO_NO_CHECK (asm-generic/socket.h: 11) makes the kernel refuse GSO on the socket
/// (EINVAL in udp_send_skb: segmentation needs the checksum) but send single datagrams.
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
#[tokio::test]
async fn kernel_refusing_gso_falls_back_without_loss() {
    use std::os::fd::AsFd;
    let opts = SocketOptions::default();
    let mut tx = UdpDriver::bind(localhost(), &opts).unwrap();
    if !tx.socket_report().gso_enabled {
        eprintln!("skipped: no GSO on this system");
        return;
    }
    sys::set_int_option(tx.socket.as_fd(), libc::SOL_SOCKET, 11, 1).unwrap();
    let mut rx = [UdpDriver::bind(localhost(), &opts).unwrap(), UdpDriver::bind(localhost(), &opts).unwrap()];
    let got = transfer(&mut tx, &mut rx, 500, 256).await;
    check_payloads(&got, 500, "after GSO fallback");
    let (st, report) = (tx.stats(), tx.socket_report());
    assert_eq!(st.gso_fallbacks, 1, "{st:?}");
    assert!(!report.gso_enabled && report.gso_supported);
    assert_eq!((st.gso_segments, st.send_errors), (0, 0), "{st:?}");
}

#[tokio::test]
async fn oversized_datagram_is_dropped_and_counted() {
    for rx_opts in receive_variants().into_iter().filter(|o| !o.gro) {
        let mut rx = UdpDriver::bind(localhost(), &rx_opts).unwrap();
        let to = rx.local_addr().unwrap();
        let peer = std::net::UdpSocket::bind(localhost()).unwrap();
        peer.send_to(&[7u8; RECV_SLOT_BYTES + 100], to).unwrap();
        peer.send_to(&[1u8; RECV_SLOT_BYTES], to).unwrap();
        peer.send_to(&[2u8; 100], to).unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let wait = rx.wait_receive(|_, from, d| got.push((from, d.to_vec())));
            tokio::time::timeout(Duration::from_secs(5), wait).await.expect("datagrams arrive").unwrap();
        }
        let from = peer.local_addr().unwrap();
        assert_eq!(got, vec![(from, vec![1u8; RECV_SLOT_BYTES]), (from, vec![2u8; 100])], "{rx_opts:?}");
        assert_eq!(rx.stats().truncated, 1, "{rx_opts:?}");
    }
}

#[tokio::test]
async fn socket_buffer_sizes_are_reported() {
    let requested = 1 << 20;
    let opts =
        SocketOptions { send_buffer_bytes: requested, recv_buffer_bytes: requested, ..Default::default() };
    let d = UdpDriver::bind(localhost(), &opts).unwrap();
    let r = d.socket_report();
    assert_eq!((r.requested_send_bytes, r.requested_recv_bytes), (requested, requested));
    assert!(r.send_buffer_bytes > 0 && r.recv_buffer_bytes > 0, "{r:?}");
    #[cfg(target_os = "linux")]
    {
        // Linux reports twice what it set: the request, or the sysctl limit it was
        // clamped to unless we could force it.
        let limit = |name: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).unwrap().trim().parse().unwrap()
        };
        let expect = |max: usize| 2 * if r.buffers_forced { requested } else { requested.min(max) };
        assert_eq!(r.send_buffer_bytes, expect(limit("wmem_max")), "{r:?}");
        assert_eq!(r.recv_buffer_bytes, expect(limit("rmem_max")), "{r:?}");
        assert!(r.batched && r.gso_enabled == r.gso_supported, "{r:?}");
    }
}

#[tokio::test]
async fn closed_port_does_not_stop_the_driver() {
    for opts in send_variants() {
        let mut d = UdpDriver::bind(localhost(), &opts).unwrap();
        // A port nobody listens on: the kernel answers with ICMP port unreachable.
        let dead = std::net::UdpSocket::bind(localhost()).unwrap().local_addr().unwrap();
        let live = std::net::UdpSocket::bind(localhost()).unwrap();
        live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for round in 0..20u8 {
            let mut n = 0;
            d.flush_with(1200, |_, buf| {
                n += 1;
                buf[0] = round;
                (n <= 10).then_some(Transmit { destination: dead, size: 100 })
            })
            .unwrap();
            // Give the ICMP errors time to come back, then read whatever they caused.
            tokio::time::sleep(Duration::from_millis(2)).await;
            d.receive_with(|_, _, _| panic!("nothing to receive")).unwrap();
        }
        let mut sent = false;
        d.flush_with(1200, |_, buf| {
            buf[..5].copy_from_slice(b"alive");
            (!std::mem::replace(&mut sent, true))
                .then_some(Transmit { destination: live.local_addr().unwrap(), size: 5 })
        })
        .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = live.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"alive", "{opts:?}");
        let st = d.stats();
        assert_eq!(st.datagrams_sent + st.send_errors, 201, "{opts:?}: {st:?}");
    }
}

#[tokio::test]
async fn timer_is_finer_than_tokio_and_spaces_wakes() {
    let mut timer = Timer::new();
    if !timer.is_precise() {
        eprintln!("skipped: no timerfd on this system");
        return;
    }
    let start = Instant::now();
    let mut last_wake: Option<Instant> = None;
    for _ in 0..20 {
        let deadline = Instant::now() + Duration::from_micros(100);
        timer.sleep_until(Some(deadline)).await.unwrap();
        let now = Instant::now();
        assert!(now >= deadline, "never early");
        if let Some(last) = last_wake {
            assert!(now - last >= MIN_WAKE_INTERVAL, "wakes are spaced");
        }
        timer.woke(now);
        last_wake = Some(now);
    }
    // How much finer than tokio's 1 ms tick the waits are is a speed figure, not a
    // correctness one: it is printed here, not asserted (a shared machine would flake).
    eprintln!("20 waits of 100 µs took {:?}", start.elapsed());
    // A cancelled wait leaves nothing behind that would end the next one early.
    let far = Instant::now() + Duration::from_millis(1);
    let _ = tokio::time::timeout(Duration::from_micros(300), timer.sleep_until(Some(far))).await;
    tokio::time::sleep(Duration::from_millis(2)).await; // the cancelled timerfd expires
    let deadline = Instant::now() + Duration::from_millis(3);
    timer.sleep_until(Some(deadline)).await.unwrap();
    assert!(Instant::now() >= deadline);
    // A wait for the instant a cancelled wait armed the timerfd for keeps that arming
    // (no re-arm), and it still ends on time, neither early nor never.
    let at = Instant::now() + Duration::from_millis(2);
    let _ = tokio::time::timeout(Duration::from_micros(300), timer.sleep_until(Some(at))).await;
    tokio::time::timeout(Duration::from_secs(1), timer.sleep_until(Some(at)))
        .await
        .expect("the kept arming fires")
        .unwrap();
    assert!(Instant::now() >= at);
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let e = UdpDriver::bind(localhost(), &SocketOptions::default()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Other);
}

#[tokio::test]
async fn dual_stack_socket_reports_ipv4_peers_as_ipv4() {
    let Ok(mut d) = UdpDriver::bind("[::]:0".parse().unwrap(), &SocketOptions::default()) else {
        eprintln!("skipped: no IPv6 on this system");
        return;
    };
    let port = d.local_addr().unwrap().port();
    let peer = std::net::UdpSocket::bind(localhost()).unwrap();
    peer.send_to(b"hello", ("127.0.0.1", port)).unwrap();
    let mut got = Vec::new();
    let wait = d.wait_receive(|_, from, data| got.push((from, data.to_vec())));
    if tokio::time::timeout(Duration::from_secs(2), wait).await.is_err() {
        eprintln!("skipped: the system keeps IPv6 sockets IPv6-only");
        return;
    }
    assert_eq!(got, vec![(peer.local_addr().unwrap(), b"hello".to_vec())]);
    // And the answer goes back to the IPv4 peer.
    let to = peer.local_addr().unwrap();
    let mut sent = false;
    d.flush_with(1200, |_, buf| {
        buf[..3].copy_from_slice(b"hey");
        (!std::mem::replace(&mut sent, true)).then_some(Transmit { destination: to, size: 3 })
    })
    .unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hey");
}

/// Two endpoints through two drivers: connect, move 20 MB, every message exactly once.
async fn endpoints_transfer(opts: &SocketOptions) -> (DriverStats, DriverStats) {
    const MESSAGES: u32 = 200;
    const MESSAGE_BYTES: usize = 100_000;
    let mut da = UdpDriver::bind(localhost(), opts).unwrap();
    let mut db = UdpDriver::bind(localhost(), opts).unwrap();
    let b_addr = db.local_addr().unwrap();
    let mut a = Endpoint::new(EndpointConfig::default(), Instant::now(), 1);
    let mut b = Endpoint::new(EndpointConfig::default(), Instant::now(), 2);
    let s = a.connect(Instant::now(), b_addr).unwrap();
    let mut sent = 0u32;
    let mut got = vec![0u32; MESSAGES as usize];
    let mut received = 0;
    let mut connected = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < MESSAGES {
        assert!(Instant::now() < deadline, "{opts:?}: {received} of {MESSAGES} messages in 60 s");
        if connected {
            while sent < MESSAGES && a.queued_bytes(s, Class::Stream) < 2 << 20 {
                let mut m = vec![(sent % 251) as u8; MESSAGE_BYTES];
                m[..4].copy_from_slice(&sent.to_be_bytes());
                a.send(Instant::now(), s, Bytes::from(m), SendOptions::reliable(Class::Stream)).unwrap();
                sent += 1;
            }
        }
        let tick = tokio::time::sleep(Duration::from_millis(2));
        tokio::select! {
            r = da.step(&mut a, tick) => { r.unwrap(); }
            r = db.step(&mut b, std::future::pending::<()>()) => { r.unwrap(); }
        }
        while let Some(e) = a.poll_event() {
            connected |= matches!(e, Event::Connected { .. });
        }
        while let Some(e) = b.poll_event() {
            if let Event::Message { data, .. } = e {
                let i = u32::from_be_bytes(data[..4].try_into().unwrap());
                assert_eq!(data.len(), MESSAGE_BYTES);
                assert!(data[4..].iter().all(|&x| x == (i % 251) as u8), "message {i} intact");
                got[i as usize] += 1;
                received += 1;
            }
        }
    }
    assert!(got.iter().all(|&c| c == 1), "{opts:?}: every message exactly once: {got:?}");
    assert!(da.stats().datagrams_sent > 16_000);
    (da.stats().clone(), db.stats().clone())
}

#[tokio::test]
async fn two_endpoints_transfer_20_mb_over_loopback() {
    let base = SocketOptions::default();
    let (a, b) = endpoints_transfer(&base).await;
    let gso = UdpDriver::bind(localhost(), &base).unwrap().socket_report().gso_enabled;
    assert!(!gso || a.gso_segments > 0, "GSO carried data: {a:?}");
    assert!(b.datagrams_received > 16_000);
    endpoints_transfer(&SocketOptions { gso: false, gro: false, ..base.clone() }).await;
    endpoints_transfer(&SocketOptions { gso: false, gro: false, batch: false, ..base }).await;
}

#[tokio::test]
async fn unreachable_peer_is_not_fatal() {
    let mut d = UdpDriver::bind(localhost(), &SocketOptions::default()).unwrap();
    let dead = std::net::UdpSocket::bind(localhost()).unwrap().local_addr().unwrap();
    let mut ep = Endpoint::new(EndpointConfig::default(), Instant::now(), 3);
    ep.connect(Instant::now(), dead).unwrap();
    let end = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < end {
        d.step(&mut ep, tokio::time::sleep(Duration::from_millis(50))).await.unwrap();
    }
    assert!(d.stats().datagrams_sent >= 2, "SYN retried");
}

#[test]
fn fanout_floor_sends_each_child_its_bytes_per_burst() {
    let f = super::bench_fanout(3, 2500, 1200, Duration::from_millis(5), Duration::from_millis(40)).unwrap();
    // Each burst: 3 children × (1200 + 1200 + 100) bytes.
    assert!(f.bytes_sent >= 7500, "{f:?}");
    assert_eq!(f.bytes_sent % 7500, 0, "{f:?}");
    assert_eq!(f.datagrams_sent, f.bytes_sent / 7500 * 9, "{f:?}");
}
