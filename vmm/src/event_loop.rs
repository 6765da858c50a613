//! The VMM's main-thread event loop (event-manager): termination signals,
//! console input, and the wake-up that says the VM has ended. The devices'
//! and the controller's handlers are subscribers of their own, defined
//! beside what they drive (`devices::virtio::QueueHandler`,
//! `control::events`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Signals that stop the VM cleanly.
pub const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Blocks [`STOP_SIGNALS`] in the calling thread (and every thread it spawns
/// afterwards), so that they are only delivered through the signalfd.
pub fn block_stop_signals() -> io::Result<libc::sigset_t> {
    use vmm_sys_util::signal::{block_signal, create_sigset, Error};
    for s in STOP_SIGNALS {
        match block_signal(s) {
            Ok(()) | Err(Error::SignalAlreadyBlocked(_)) => {}
            Err(e) => return Err(io::Error::other(format!("blocking signal {s}: {e}"))),
        }
    }
    create_sigset(&STOP_SIGNALS).map_err(io::Error::from)
}

/// Delivers SIGINT/SIGTERM as an exit reason.
struct SignalSource {
    fd: OwnedFd,
    exit: ExitNotifier,
}

impl SignalSource {
    fn new(set: &libc::sigset_t, exit: ExitNotifier) -> io::Result<Self> {
        // SAFETY: `set` is a valid sigset; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, exit })
    }
}

impl MutEventSubscriber for SignalSource {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize == size {
            self.exit.notify(ExitReason::Signal(info.ssi_signo as i32));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch for signals: {e:?}");
        }
    }
}

/// Wakes the loop when any thread reports the end of the VM.
struct ExitWatcher {
    exit: ExitNotifier,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the exit event: {e:?}");
        }
    }
}

/// Terminal input forwarded to the guest's serial console.
pub struct ConsoleInput<W: io::Write + Send + 'static> {
    fd: RawFd,
    serial: Arc<Mutex<SerialDevice<W>>>,
}

impl<W: io::Write + Send + 'static> ConsoleInput<W> {
    pub fn new(fd: RawFd, serial: Arc<Mutex<SerialDevice<W>>>) -> Self {
        Self { fd, serial }
    }
}

impl<W: io::Write + Send + 'static> MutEventSubscriber for ConsoleInput<W> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 || events.event_set().contains(EventSet::HANG_UP) {
            // End of input: stop watching, the guest keeps running.
            let _ = ops.remove(events);
            return;
        }
        lock(&self.serial).enqueue_input(&buf[..n as usize]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::warn!("console input disabled: {e:?}");
        }
    }
}

/// Runs until some thread reports the end of the VM, and returns why.
pub fn run_until_exit(
    exit: &ExitNotifier,
    signals: &libc::sigset_t,
    subscribers: Vec<Box<dyn MutEventSubscriber>>,
) -> io::Result<ExitReason> {
    let mut em = EventManager::<Box<dyn MutEventSubscriber>>::new()
        .map_err(|e| io::Error::other(format!("event manager: {e:?}")))?;
    em.add_subscriber(Box::new(SignalSource::new(signals, exit.clone())?));
    em.add_subscriber(Box::new(ExitWatcher { exit: exit.clone() }));
    for s in subscribers {
        em.add_subscriber(s);
    }
    loop {
        if let Some(reason) = exit.reason() {
            return Ok(reason);
        }
        em.run()
            .map_err(|e| io::Error::other(format!("event loop: {e:?}")))?;
    }
}
