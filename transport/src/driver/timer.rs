//! The endpoint's timer, to well under a millisecond without spinning.
//!
//! tokio's timer keeps 1 ms slots and rounds a deadline up to the next one, so a sleep
//! ends 0–2 ms late (1.1 ms on average, measured). Pacing schedules datagrams tens to
//! hundreds of microseconds apart; the pacer's 2 ms token bucket absorbs most of that
//! lateness, but not all of it at low rates (a 20 Mbit/s paced flow reached 19 Mbit/s).
//! Yielding in a loop until the deadline is precise but keeps a core busy (a full core at
//! 20 Mbit/s). On Linux we therefore wait on a `timerfd` (CLOCK_MONOTONIC, the clock of
//! `Instant`), which tokio's reactor watches like a socket: wakes land within tens of
//! microseconds and cost no CPU in between. Elsewhere tokio's timer is used.
//!
//! Timer wakes are at least [`MIN_WAKE_INTERVAL`] apart: waking for every paced datagram
//! would cost a wake-up and a system call per datagram; waking every 250 µs sends what
//! accumulated as one batch (GSO) instead.

use std::io;
use std::time::{Duration, Instant};

/// Least time between two timer wakes. The pacer's bucket holds 2 ms of tokens
/// (`congestion::pacer`), so waking at most every 250 µs loses no rate and bounds a
/// burst to 250 µs of data; measured at 400 Mbit/s paced on loopback, it cut CPU from
/// 3.4 s to 0.7 s per 3 s run against waking for each datagram.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_micros(250);

#[derive(Debug)]
pub(super) struct Timer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<super::sys::TimerFd>>,
    /// When the timer last woke the driver.
    last_wake: Option<Instant>,
    /// The expiry the timerfd is armed for, until a read consumes it. A wait for the
    /// same instant (the common case: the driver waits again and again for one ack or
    /// pacing deadline while datagrams come and go) reuses it instead of re-arming,
    /// which cost a `timerfd_settime` per loop turn (5.6% of a relay's CPU, measured).
    #[cfg(target_os = "linux")]
    armed: Option<Instant>,
}

impl Timer {
    /// Must be called inside a tokio runtime. Without a timerfd (none left, or not
    /// Linux) the timer falls back to tokio's.
    pub fn new() -> Timer {
        #[cfg(target_os = "linux")]
        let fd = match super::sys::TimerFd::register() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::debug!(error = %e, "no timerfd; using tokio's 1 ms timer");
                None
            }
        };
        Timer {
            #[cfg(target_os = "linux")]
            fd,
            last_wake: None,
            #[cfg(target_os = "linux")]
            armed: None,
        }
    }

    /// Whether waits are finer than tokio's 1 ms.
    pub fn is_precise(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.fd.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// The timer woke the driver now.
    pub fn woke(&mut self, now: Instant) {
        self.last_wake = Some(now);
    }

    /// Complete at `deadline` (never, for `None`), or [`MIN_WAKE_INTERVAL`] after the
    /// last wake if that is later. Cancel-safe.
    pub async fn sleep_until(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let Some(deadline) = deadline else { return std::future::pending().await };
        let at = self.last_wake.map_or(deadline, |w| deadline.max(w + MIN_WAKE_INTERVAL));
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            return wait_timerfd(fd, &mut self.armed, at).await;
        }
        tokio::time::sleep_until(at.into()).await;
        Ok(())
    }
}

/// Wait on the timerfd until `at`. `armed` is the expiry the timerfd holds (see
/// `Timer::armed`).
#[cfg(target_os = "linux")]
async fn wait_timerfd(
    fd: &tokio::io::unix::AsyncFd<super::sys::TimerFd>,
    armed: &mut Option<Instant>,
    at: Instant,
) -> io::Result<()> {
    loop {
        let now = Instant::now();
        if at <= now {
            return Ok(());
        }
        if *armed != Some(at) {
            // Re-arming replaces an earlier setting (a cancelled wait's) and clears its
            // unread expiry; a stale readiness then reads WouldBlock and is cleared below.
            *armed = None;
            fd.get_ref().arm(at - now)?;
            *armed = Some(at);
        }
        // Armed for `at` (by us or by a cancelled wait for the same instant, whose expiry,
        // if it came meanwhile, is still unread): one read completes the wait.
        loop {
            let mut guard = fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().read()) {
                Ok(result) => {
                    *armed = None;
                    result?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
    }
}
