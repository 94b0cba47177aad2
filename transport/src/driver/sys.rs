//! The Linux system calls the driver batches with, and the socket options it sets:
//! `sendmmsg` whose messages may carry a UDP GSO segment size, `recvmmsg` that reads the
//! UDP GRO segment size, `SO_{SND,RCV}BUFFORCE`, and a `timerfd` for the endpoint's
//! timer. All of the driver's `unsafe` is here; each function does one system call and
//! reports the OS error as an `io::Error`.
//!
//! References: udp(7) for `UDP_SEGMENT`/`UDP_GRO`; sendmmsg(2), recvmmsg(2); cmsg(3).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::time::Duration;

use libc::{c_int, c_uint, c_void};

use super::tx::{Message, BATCH};

/// Control-message buffer of one message: a `cmsghdr` (16 bytes) plus an `int` of GSO or
/// GRO segment size, padded (`CMSG_SPACE(4)` = 24 on 64-bit), with room to spare should
/// the kernel add another control message. Aligned like `cmsghdr`, as cmsg(3) requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_BYTES]);
const CONTROL_BYTES: usize = 64;

/// Space for the `u16` segment size of a GSO send.
// SAFETY: CMSG_SPACE only does arithmetic on its argument.
const GSO_CONTROL_SPACE: usize = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as c_uint) } as usize;
// SAFETY: as above.
const GSO_CONTROL_LEN: usize = unsafe { libc::CMSG_LEN(mem::size_of::<u16>() as c_uint) } as usize;
const _: () = assert!(GSO_CONTROL_SPACE <= CONTROL_BYTES);

/// `SO_SNDBUFFORCE`/`SO_RCVBUFFORCE` from include/uapi/asm-generic/socket.h (the `libc`
/// crate does not export them for Linux). mips, sparc, parisc and alpha number them
/// differently; there we do not force.
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_SNDBUFFORCE: Option<c_int> = Some(32);
#[cfg(not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64")))]
const SO_RCVBUFFORCE: Option<c_int> = Some(33);
#[cfg(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64"))]
const SO_SNDBUFFORCE: Option<c_int> = None;
#[cfg(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64"))]
const SO_RCVBUFFORCE: Option<c_int> = None;

/// Hand `messages` (at most [`BATCH`]; at least one) to the kernel in one system call:
/// `sendmsg` for one, `sendmmsg` for more. Each message is `buf[offset..offset + len]`;
/// one with a segment size goes with a `UDP_SEGMENT` control message (GSO). Destinations
/// are given in the socket's family (see `super::socket_address`).
///
/// Returns how many messages the kernel took, at least one; the error is the first
/// message's (sendmmsg(2) reports an error only if nothing was sent; a later message's
/// error shows up when it is retried).
pub(super) fn send(fd: BorrowedFd<'_>, buf: &[u8], messages: &[Message]) -> io::Result<usize> {
    let count = messages.len().min(BATCH);
    assert!(count > 0, "send of no messages");
    // SAFETY: sockaddr_storage, iovec and mmsghdr are C structs of integers and pointers;
    // all-zero is a valid value for each (null pointers, zero lengths).
    let (mut names, mut iovs, mut hdrs) = unsafe {
        (
            mem::zeroed::<[libc::sockaddr_storage; BATCH]>(),
            mem::zeroed::<[libc::iovec; BATCH]>(),
            mem::zeroed::<[libc::mmsghdr; BATCH]>(),
        )
    };
    let mut name_lens = [0 as libc::socklen_t; BATCH];
    let mut controls = [ControlBuf([0; CONTROL_BYTES]); BATCH];
    for (i, m) in messages[..count].iter().enumerate() {
        let addr = socket2::SockAddr::from(m.destination);
        name_lens[i] = addr.len();
        names[i] = addr.as_storage();
        // Slicing checks the bounds, so the kernel only ever reads inside `buf`.
        let bytes = &buf[m.offset..m.offset + m.len];
        iovs[i] = libc::iovec { iov_base: bytes.as_ptr() as *mut c_void, iov_len: bytes.len() };
    }
    for i in 0..count {
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = ptr::addr_of_mut!(names[i]).cast();
        hdr.msg_namelen = name_lens[i];
        hdr.msg_iov = ptr::addr_of_mut!(iovs[i]);
        hdr.msg_iovlen = 1;
        if let Some(segment_len) = messages[i].segment_len {
            hdr.msg_control = ptr::addr_of_mut!(controls[i]).cast();
            hdr.msg_controllen = GSO_CONTROL_SPACE as _;
            // SAFETY: msg_control points to GSO_CONTROL_SPACE bytes aligned for cmsghdr
            // and msg_controllen says so, so CMSG_FIRSTHDR returns a non-null pointer to
            // a header followed by room for the u16 (GSO_CONTROL_SPACE = CMSG_SPACE(2));
            // the data may be unaligned, hence write_unaligned.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = GSO_CONTROL_LEN as _;
                ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_len);
            }
        }
    }
    let fd = fd.as_raw_fd();
    let sent = if count == 1 {
        // SAFETY: the header points into names, iovs, controls and buf, which are alive
        // and not written until the call returns; the kernel only reads through it.
        let bytes = unsafe { libc::sendmsg(fd, &hdrs[0].msg_hdr, 0) };
        if bytes < 0 {
            -1
        } else {
            1
        }
    } else {
        // SAFETY: as above, for each of the first `count` headers; count <= BATCH, the
        // length of hdrs. The kernel writes only msg_len of each.
        unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as c_uint, 0) }
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    assert!(sent >= 1 && sent as usize <= count, "sendmmsg returned {sent} of {count}");
    Ok(sent as usize)
}

/// One datagram (or GRO train of datagrams) that `recv` read into slot `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Received {
    pub slot: usize,
    pub source: SocketAddr,
    /// Bytes in the slot.
    pub len: usize,
    /// Size of each datagram in the slot: `len` unless GRO coalesced several (then all
    /// but the last are this size).
    pub segment_len: usize,
    /// The datagram did not fit its slot (MSG_TRUNC); the bytes are a useless prefix.
    pub truncated: bool,
}

/// Read up to `min(BATCH, buf.len() / slot_len)` datagrams with one `recvmmsg`, datagram
/// `i` into `buf[i * slot_len..]`, appending what arrived to `out`. Returns how many.
pub(super) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    slot_len: usize,
    out: &mut Vec<Received>,
) -> io::Result<usize> {
    let count = (buf.len() / slot_len).min(BATCH);
    assert!(count > 0, "receive buffer smaller than one slot");
    // SAFETY: plain C structs, all-zero is valid (see `send`).
    let (mut names, mut iovs, mut hdrs) = unsafe {
        (
            mem::zeroed::<[libc::sockaddr_storage; BATCH]>(),
            mem::zeroed::<[libc::iovec; BATCH]>(),
            mem::zeroed::<[libc::mmsghdr; BATCH]>(),
        )
    };
    let mut controls = [ControlBuf([0; CONTROL_BYTES]); BATCH];
    for (iov, slot) in iovs.iter_mut().zip(buf.chunks_exact_mut(slot_len)).take(count) {
        *iov = libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: slot.len() };
    }
    for i in 0..count {
        let hdr = &mut hdrs[i].msg_hdr;
        hdr.msg_name = ptr::addr_of_mut!(names[i]).cast();
        hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = ptr::addr_of_mut!(iovs[i]);
        hdr.msg_iovlen = 1;
        hdr.msg_control = ptr::addr_of_mut!(controls[i]).cast();
        hdr.msg_controllen = CONTROL_BYTES as _;
    }
    // SAFETY: each of the first `count` headers points at its own name, iovec (a disjoint
    // slot of `buf`, exclusively borrowed here) and control buffer, all alive until the
    // call returns; the kernel writes at most the lengths given. Null timeout: return
    // what is there (the socket is non-blocking).
    let received =
        unsafe { libc::recvmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), count as c_uint, 0, ptr::null_mut()) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let received = received as usize;
    assert!(received <= count, "recvmmsg returned {received} of {count}");
    for (slot, m) in hdrs[..received].iter().enumerate() {
        let hdr = &m.msg_hdr;
        // SAFETY: the kernel wrote an address of msg_namelen bytes (at most the storage
        // size we passed) into names[slot].
        let addr = unsafe { socket2::SockAddr::new(names[slot], hdr.msg_namelen) };
        // A UDP socket only receives from IP addresses; anything else is skipped.
        let Some(source) = addr.as_socket() else { continue };
        let len = (m.msg_len as usize).min(slot_len);
        out.push(Received {
            slot,
            source,
            len,
            segment_len: gro_segment_len(hdr).unwrap_or(len),
            truncated: hdr.msg_flags & libc::MSG_TRUNC != 0,
        });
    }
    Ok(received)
}

/// The `UDP_GRO` segment size the kernel attached to a received message, if any.
fn gro_segment_len(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: hdr's msg_control/msg_controllen describe the control buffer the kernel
    // filled in; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside it and return null past its end,
    // and each header they return is followed by cmsg_len - CMSG_LEN(0) bytes of data.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>());
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

pub(super) fn set_int_option(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: we pass a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            ptr::addr_of!(value).cast(),
            mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn get_int_option(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: value and len are live and len holds value's size; the kernel writes at
    // most that many bytes.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, ptr::addr_of_mut!(value).cast(), &mut len) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18 and later). Devices can still
/// refuse a GSO send (EIO without checksum offload); the driver then falls back.
pub(super) fn gso_supported(fd: BorrowedFd<'_>) -> bool {
    get_int_option(fd, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

/// Ask for GRO: the kernel may then deliver a train of datagrams from one source as one
/// message with a `UDP_GRO` segment size (Linux 5.0 and later). Returns whether it took.
pub(super) fn enable_gro(fd: BorrowedFd<'_>) -> bool {
    set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok()
}

/// Set a buffer size past `net.core.{w,r}mem_max` (needs CAP_NET_ADMIN; EPERM otherwise).
pub(super) fn force_buffer_size(fd: BorrowedFd<'_>, send: bool, bytes: usize) -> io::Result<()> {
    let name = if send { SO_SNDBUFFORCE } else { SO_RCVBUFFORCE };
    let name = name.ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
    let bytes = c_int::try_from(bytes).unwrap_or(c_int::MAX);
    set_int_option(fd, libc::SOL_SOCKET, name, bytes)
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), for benchmarks.
pub(super) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the live `ts`.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r < 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A `timerfd` on CLOCK_MONOTONIC (the clock `Instant` reads on Linux): a file descriptor
/// that becomes readable when the timer expires, to the microsecond, so tokio's reactor
/// can wait for it like for a socket (tokio's own timer has 1 ms slots).
#[derive(Debug)]
pub(super) struct TimerFd(std::os::fd::OwnedFd);

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl TimerFd {
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new file
        // descriptor that nothing else owns.
        let fd =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own (see above).
        Ok(TimerFd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// A new timerfd, registered with the current tokio runtime's reactor (which must
    /// exist: `UdpDriver::bind` checks).
    pub fn register() -> io::Result<tokio::io::unix::AsyncFd<TimerFd>> {
        let timer = TimerFd::new()?;
        // SAFETY: TimerFd owns its OwnedFd, and as_raw_fd always returns that descriptor;
        // it stays open until the TimerFd, which the AsyncFd owns from here, is dropped.
        Ok(unsafe { tokio::io::unix::AsyncFd::register(timer) }?)
    }

    /// Expire once, `after` from now (at least 1 ns: zero would disarm). Replaces any
    /// earlier setting and clears an expiry not yet read.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as _,
            },
        };
        // SAFETY: spec is a live itimerspec; a null old-value pointer is allowed.
        let r = unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, ptr::null_mut()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Consume an expiry: Ok once the timer has expired, WouldBlock before.
    pub fn read(&self) -> io::Result<()> {
        let mut expirations = 0u64;
        // SAFETY: we pass a live u64 and its size, as timerfd_create(2) requires.
        let r = unsafe {
            libc::read(self.0.as_raw_fd(), ptr::addr_of_mut!(expirations).cast(), mem::size_of::<u64>())
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
