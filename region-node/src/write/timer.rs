//! A one-shot timer precise to the microsecond, for the committer's gathering wait.
//!
//! Tokio's timer, and the epoll wait under it, count whole milliseconds: a 300 µs wait cost one
//! to two milliseconds. A timerfd registered with the runtime's reactor wakes the committer when
//! the kernel's high-resolution timer fires.

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// One armed expiry at a time; arming again replaces it.
pub(super) struct PreciseTimer {
    fd: AsyncFd<Fd>,
}

impl PreciseTimer {
    /// A disarmed timer; must be created inside the runtime that will await it.
    pub(super) fn new() -> io::Result<Self> {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
            .map_err(io::Error::from)?;
        // Deprecated because an arbitrary `AsRawFd` might close or swap its descriptor while
        // registered; `Fd` owns its timerfd, which lives exactly as long as this `AsyncFd`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Fd(fd))?;
        Ok(Self { fd })
    }

    /// Fires once, `after` from now. An expiry armed earlier and not awaited is forgotten.
    pub(super) fn arm(&self, after: Duration) -> io::Result<()> {
        self.consume()?;
        let after = after.max(Duration::from_nanos(1)); // zero would disarm it
        self.fd
            .get_ref()
            .0
            .set(Expiration::OneShot(TimeSpec::from_duration(after)), TimerSetTimeFlags::empty())
            .map_err(io::Error::from)
    }

    /// Resolves once the armed expiry has passed.
    pub(super) async fn expired(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| read_expiry(&fd.get_ref().0)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads a pending expiry, if any, so the next `expired` waits for the next one.
    fn consume(&self) -> io::Result<()> {
        match read_expiry(&self.fd.get_ref().0) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

fn read_expiry(fd: &TimerFd) -> io::Result<()> {
    // Non-blocking: EAGAIN (WouldBlock) while the expiry has not passed.
    fd.wait().map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn fires_after_the_armed_wait_and_not_before_rearming_replaces_it() {
        let timer = PreciseTimer::new().expect("timerfd");
        let started = Instant::now();
        timer.arm(Duration::from_micros(300)).expect("arm");
        timer.expired().await.expect("expired");
        assert!(started.elapsed() >= Duration::from_micros(300), "fired early: {:?}", started.elapsed());

        // An expiry that passed unawaited does not make the next wait return at once.
        timer.arm(Duration::from_micros(1)).expect("arm");
        std::thread::sleep(Duration::from_millis(2));
        let started = Instant::now();
        timer.arm(Duration::from_millis(20)).expect("arm");
        timer.expired().await.expect("expired");
        assert!(started.elapsed() >= Duration::from_millis(20), "stale expiry: {:?}", started.elapsed());
    }
}
