//! The xenstore client's protocol logic, sans I/O: requests, replies, watch
//! events and timeouts over a [`StoreRing`] (the shared ring and its event
//! channel on Xen, a simulated daemon in tests).
//!
//! Requests are sent one at a time. A request that times out is
//! *abandoned*, not forgotten: the daemon still answers it eventually, and
//! that late reply (recognised by its request id) is skipped when it
//! arrives instead of being taken for the answer to a later request. Bytes
//! of a request that did not fit the ring before its deadline are kept and
//! sent ahead of the next request, so the daemon never sees half a message.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use portcullis_vchan::DomId;

use super::wire::{self, Errno, Message, Op, Part, Reassembler, XsError};

/// Most watch events kept while waiting for replies.
pub const MAX_QUEUED_EVENTS: usize = 16;
/// Most abandoned (timed-out) requests whose late replies are remembered;
/// past that the oldest is forgotten, and its reply, should it still come,
/// is a protocol error.
pub const MAX_ABANDONED: usize = 32;
/// How long one request may take, nanoseconds. xenstored is dom0's single
/// daemon: when dom0 is busy (seen under nested emulation: `xl create`
/// taking 20 s) a reply can take more than 10 s, and a guest that gave up
/// then stopped or was restarted, which loaded dom0 further. So the wait
/// is long, and said on the console once it passes [`SLOW_REPLY_NS`].
pub const REQUEST_TIMEOUT_NS: u64 = 60_000_000_000;
/// After how long without a reply a request is reported as slow
/// ([`StoreRing::slow`]; the wait goes on), nanoseconds.
pub const SLOW_REPLY_NS: u64 = 5_000_000_000;

/// The byte rings to the daemon and its doorbell, as the client needs them.
pub trait StoreRing {
    /// Copies as much of `bytes` as fits into the request ring; returns how
    /// many were written (0: full).
    fn write(&mut self, bytes: &[u8]) -> Result<usize, XsError>;
    /// Copies up to `buf.len()` bytes out of the response ring; returns how
    /// many were read (0: nothing there).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, XsError>;
    /// Signals the daemon.
    fn notify(&mut self) -> Result<(), XsError>;
    /// A monotonic clock, nanoseconds.
    fn now_ns(&mut self) -> Result<u64, XsError>;
    /// Waits for the daemon's signal (a spurious return is allowed) until
    /// `deadline_ns`; [`XsError::Timeout`] once the deadline has passed.
    fn wait(&mut self, deadline_ns: u64) -> Result<(), XsError>;
    /// Called once for a request that has waited [`SLOW_REPLY_NS`] with no
    /// reply (it goes on waiting until [`REQUEST_TIMEOUT_NS`]): a notice
    /// for the console. By default nothing.
    fn slow(&mut self, _op: Op) {}
}

/// A transaction id (0 is "no transaction").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    /// Outside any transaction.
    pub const NONE: Tx = Tx(0);
}

/// One permission entry: `n<domid>` (none), `r` (read), `w`, `b` (both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// No access (as the first entry: the owner).
    None(DomId),
    /// Read access.
    Read(DomId),
    /// Write access.
    Write(DomId),
    /// Read and write access.
    Both(DomId),
}

/// A xenstore connection over a [`StoreRing`].
#[derive(Debug)]
pub struct Client<R> {
    ring: R,
    next_req: u32,
    rx: Reassembler,
    /// Watch events that arrived during requests, oldest first (at most
    /// [`MAX_QUEUED_EVENTS`]; a `Vec`, not a `VecDeque`, for these few:
    /// image size, issue 14).
    events: Vec<(String, String)>,
    watches: Vec<(String, String)>,
    /// Request bytes not yet in the ring (the tail of a timed-out request).
    unsent: Vec<u8>,
    /// Ids of timed-out requests whose replies may still come, oldest
    /// first (at most [`MAX_ABANDONED`]; a `Vec` as `events`).
    abandoned: Vec<u32>,
    /// Late replies skipped so far.
    late_replies: u64,
    /// The request in flight was reported slow ([`StoreRing::slow`]).
    slow_noticed: bool,
}

/// A request's time limits (monotonic ns).
#[derive(Clone, Copy)]
struct Deadline {
    /// The request's operation, for the slow notice.
    op: Op,
    /// When it is reported slow.
    slow: u64,
    /// When it is given up.
    end: u64,
}

impl<R: StoreRing> Client<R> {
    /// A client over `ring`; request ids start at 1.
    pub fn new(ring: R) -> Self {
        Client {
            ring,
            next_req: 1,
            rx: Reassembler::default(),
            events: Vec::new(),
            watches: Vec::new(),
            unsent: Vec::new(),
            abandoned: Vec::new(),
            late_replies: 0,
            slow_noticed: false,
        }
    }

    /// The ring (for tests and diagnostics).
    pub fn ring(&mut self) -> &mut R {
        &mut self.ring
    }

    /// How many late replies to abandoned requests were skipped.
    pub fn late_replies(&self) -> u64 {
        self.late_replies
    }

    fn deadline(&mut self, timeout_ns: u64) -> Result<u64, XsError> {
        Ok(self.ring.now_ns()?.saturating_add(timeout_ns))
    }

    /// Pushes `self.unsent` into the ring until it is empty or `deadline`.
    fn flush(&mut self, deadline: Deadline) -> Result<(), XsError> {
        while !self.unsent.is_empty() {
            let n = self.ring.write(&self.unsent)?;
            if n > 0 {
                self.unsent.drain(..n.min(self.unsent.len()));
                self.ring.notify()?;
            } else {
                self.ring.notify()?;
                self.wait_slow(deadline)?;
            }
        }
        Ok(())
    }

    /// One wait of a request's: until its deadline, or until its slow mark
    /// if that comes first and was not reported yet (then reported).
    fn wait_slow(&mut self, mut deadline: Deadline) -> Result<(), XsError> {
        if self.slow_noticed {
            return self.ring.wait(deadline.end);
        }
        if self.ring.now_ns()? >= deadline.slow {
            self.slow_noticed = true;
            self.ring.slow(deadline.op);
            return self.ring.wait(deadline.end);
        }
        deadline.end = deadline.end.min(deadline.slow);
        match self.ring.wait(deadline.end) {
            // The slow mark, not the request's deadline: report on the next
            // look.
            Err(XsError::Timeout) if deadline.end == deadline.slow => Ok(()),
            r => r,
        }
    }

    /// Reads whatever the response ring holds; returns a complete message
    /// if one formed.
    fn poll_message(&mut self) -> Result<Option<Message>, XsError> {
        loop {
            let mut chunk = [0u8; 64];
            let want = self.rx.wanted().min(chunk.len());
            let n = self.ring.read(chunk.get_mut(..want).unwrap_or_default())?;
            if n == 0 {
                return Ok(None);
            }
            self.ring.notify()?;
            let (_, msg) = self.rx.push(chunk.get(..n).unwrap_or_default())?;
            if msg.is_some() {
                return Ok(msg);
            }
        }
    }

    fn queue_event(&mut self, msg: &Message) {
        if let Some((path, token)) = msg.watch_event() {
            if self.events.len() < MAX_QUEUED_EVENTS {
                self.events.push((path.into(), token.into()));
            }
        }
    }

    fn abandon(&mut self, req_id: u32) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.remove(0);
        }
        self.abandoned.push(req_id);
    }

    /// A message that is neither a watch event nor the awaited reply: the
    /// late reply to an abandoned request is skipped (`Ok`), anything
    /// else is a protocol error.
    fn stray(&mut self, msg: &Message) -> Result<(), XsError> {
        let id = msg.header.req_id;
        match self.abandoned.iter().position(|&a| a == id) {
            Some(i) => {
                self.abandoned.remove(i);
                self.late_replies = self.late_replies.saturating_add(1);
                Ok(())
            }
            None => Err(XsError::Protocol),
        }
    }

    /// Sends one request and returns the payload of its reply.
    pub fn request(&mut self, op: Op, tx: Tx, parts: &[Part<'_>]) -> Result<Vec<u8>, XsError> {
        let bytes = wire::encode(op, self.next_req, tx.0, parts)?;
        let now = self.ring.now_ns()?;
        let deadline = Deadline {
            op,
            slow: now.saturating_add(SLOW_REPLY_NS),
            end: now.saturating_add(REQUEST_TIMEOUT_NS),
        };
        self.slow_noticed = false;
        // The tail of an earlier, timed-out request goes first; if even that
        // does not fit in time, this request is not sent at all.
        self.flush(deadline)?;
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.unsent = bytes;
        let result = self.flush(deadline).and_then(|()| self.await_reply(op, req_id, deadline));
        if matches!(result, Err(XsError::Timeout)) {
            self.abandon(req_id);
        }
        result
    }

    fn await_reply(&mut self, op: Op, req_id: u32, deadline: Deadline) -> Result<Vec<u8>, XsError> {
        loop {
            match self.poll_message()? {
                Some(msg) if msg.op() == Some(Op::WatchEvent) => self.queue_event(&msg),
                Some(msg) if msg.header.req_id == req_id => return msg.into_reply(op),
                Some(msg) => self.stray(&msg)?,
                None => self.wait_slow(deadline)?,
            }
        }
    }

    /// Reads `path`; `Ok(None)` if it does not exist.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        wire::check_name(path)?;
        match self.request(Op::Read, tx, &[Part::Str(path)]) {
            Ok(v) => Ok(Some(v)),
            Err(XsError::Daemon(Errno::NoEnt)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` at `path`.
    pub fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> Result<(), XsError> {
        wire::check_name(path)?;
        self.request(Op::Write, tx, &[Part::Str(path), Part::Raw(value)]).map(|_| ())
    }

    /// Lists the children of `path`.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsError> {
        wire::check_name(path)?;
        let reply = self.request(Op::Directory, tx, &[Part::Str(path)])?;
        wire::directory_entries(&reply)
            .map(|n| core::str::from_utf8(n).map(String::from).map_err(|_| XsError::Protocol))
            .collect()
    }

    /// Removes `path` and its children; a missing path is not an error.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        wire::check_name(path)?;
        match self.request(Op::Rm, tx, &[Part::Str(path)]) {
            Ok(_) | Err(XsError::Daemon(Errno::NoEnt)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets the permissions of `path` (the first entry names the owner).
    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        wire::check_name(path)?;
        let mut texts: Vec<String> = Vec::with_capacity(perms.len());
        for p in perms {
            // The letter as a `str` and the domain id as a `u32`: no
            // `char` or `u16` formatting linked (image size, issue 14).
            let (c, d) = match p {
                Perm::None(d) => ("n", d),
                Perm::Read(d) => ("r", d),
                Perm::Write(d) => ("w", d),
                Perm::Both(d) => ("b", d),
            };
            let mut s = String::from(c);
            let _ = write!(s, "{}", u32::from(d.0));
            texts.push(s);
        }
        let mut parts = Vec::with_capacity(perms.len() + 1);
        parts.push(Part::Str(path));
        parts.extend(texts.iter().map(|t| Part::Str(t)));
        self.request(Op::SetPerms, tx, &parts).map(|_| ())
    }

    /// Starts a transaction.
    pub fn transaction_start(&mut self) -> Result<Tx, XsError> {
        let reply = self.request(Op::TransactionStart, Tx::NONE, &[Part::Str("")])?;
        let text = reply.split(|&b| b == 0).next().unwrap_or_default();
        let id = core::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(XsError::Protocol)?;
        Ok(Tx(id))
    }

    /// Commits (`commit`) or aborts a transaction. A commit may fail with
    /// `Daemon(Again)`: the caller retries the whole transaction.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<(), XsError> {
        self.request(Op::TransactionEnd, tx, &[Part::Str(if commit { "T" } else { "F" })])
            .map(|_| ())
    }

    /// Registers a watch on `path` under `token`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        wire::check_name(path)?;
        wire::check_name(token)?;
        self.request(Op::Watch, Tx::NONE, &[Part::Str(path), Part::Str(token)])?;
        self.watches.push((path.into(), token.into()));
        Ok(())
    }

    /// Removes a watch.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        wire::check_name(path)?;
        wire::check_name(token)?;
        self.watches.retain(|(p, t)| !(p == path && t == token));
        self.events.retain(|(_, t)| t != token);
        self.request(Op::Unwatch, Tx::NONE, &[Part::Str(path), Part::Str(token)]).map(|_| ())
    }

    /// Whether a watch on `path` with `token` is registered.
    pub fn is_watched(&self, path: &str, token: &str) -> bool {
        self.watches.iter().any(|(p, t)| p == path && t == token)
    }

    /// Waits for a watch event with `token` (`None`: forever); returns
    /// `Ok(false)` on timeout.
    pub fn wait_watch(&mut self, token: &str, timeout_ns: Option<u64>) -> Result<bool, XsError> {
        Ok(self.wait_event(timeout_ns, |(_, t)| t == token)?.is_some())
    }

    /// Waits for the next watch event of any token (`None`: forever);
    /// returns its path and token, or `Ok(None)` on timeout. Events that
    /// arrived during requests come first, in order.
    pub fn next_event(
        &mut self,
        timeout_ns: Option<u64>,
    ) -> Result<Option<(String, String)>, XsError> {
        self.wait_event(timeout_ns, |_| true)
    }

    /// The first queued or arriving watch event (path, token) that `wanted`
    /// accepts, taken out of the queue; `Ok(None)` once `timeout_ns` passed.
    fn wait_event(
        &mut self,
        timeout_ns: Option<u64>,
        wanted: impl Fn(&(String, String)) -> bool,
    ) -> Result<Option<(String, String)>, XsError> {
        let deadline = match timeout_ns {
            Some(t) => self.deadline(t)?,
            None => u64::MAX,
        };
        loop {
            if let Some(i) = self.events.iter().position(&wanted) {
                return Ok(Some(self.events.remove(i)));
            }
            match self.poll_message()? {
                Some(msg) if msg.op() == Some(Op::WatchEvent) => self.queue_event(&msg),
                Some(msg) => self.stray(&msg)?,
                None => match self.ring.wait(deadline) {
                    Ok(()) => {}
                    Err(XsError::Timeout) => return Ok(None),
                    Err(e) => return Err(e),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{SimDaemon, MS, S};
    use super::*;
    use alloc::collections::VecDeque;
    use std::vec;

    fn client() -> Client<SimDaemon> {
        let mut d = SimDaemon::default();
        d.store.insert(b"a".to_vec(), b"A".to_vec());
        d.store.insert(b"b".to_vec(), b"B".to_vec());
        Client::new(d)
    }

    #[test]
    fn a_late_reply_is_skipped_not_taken_for_the_next_one() {
        let mut c = client();
        c.ring().delays = VecDeque::from(vec![REQUEST_TIMEOUT_NS + 5 * S]);
        assert_eq!(c.read(Tx::NONE, "a"), Err(XsError::Timeout));
        assert_eq!(c.ring().now, REQUEST_TIMEOUT_NS);
        // The reply to the abandoned request arrives first, then ours.
        assert_eq!(c.read(Tx::NONE, "b"), Ok(Some(b"B".to_vec())));
        assert_eq!(c.late_replies(), 1);
        for _ in 0..3 {
            assert_eq!(c.read(Tx::NONE, "a"), Ok(Some(b"A".to_vec())));
            assert_eq!(c.read(Tx::NONE, "nope"), Ok(None));
        }
        assert_eq!(c.late_replies(), 1);
    }

    #[test]
    fn a_late_reply_while_waiting_for_a_watch_is_skipped() {
        let mut c = client();
        c.ring().delays = VecDeque::from(vec![REQUEST_TIMEOUT_NS + 2 * S]);
        assert_eq!(c.write(Tx::NONE, "x", b"1"), Err(XsError::Timeout));
        assert_eq!(c.wait_watch("tok", Some(5 * S)), Ok(false));
        assert_eq!(c.late_replies(), 1);
        assert_eq!(c.read(Tx::NONE, "x"), Ok(Some(b"1".to_vec())));
    }

    #[test]
    fn a_slow_reply_is_reported_once_and_still_taken() {
        let mut c = client();
        // dom0 busy: the reply takes 12 s (more than the old 10 s limit).
        c.ring().delays = VecDeque::from(vec![12 * S, MS]);
        assert_eq!(c.read(Tx::NONE, "a"), Ok(Some(b"A".to_vec())));
        assert_eq!(c.ring().slow, [Op::Read]);
        assert_eq!(c.ring().now, 12 * S);
        // A quick one is not reported, and the next slow one is again.
        assert_eq!(c.read(Tx::NONE, "b"), Ok(Some(b"B".to_vec())));
        c.ring().delays = VecDeque::from(vec![SLOW_REPLY_NS + S]);
        assert_eq!(c.write(Tx::NONE, "c", b"C"), Ok(()));
        assert_eq!(c.ring().slow, [Op::Read, Op::Write]);
        assert_eq!(c.late_replies(), 0);
    }

    #[test]
    fn a_request_is_given_up_only_at_its_deadline() {
        let mut c = client();
        c.ring().delays = VecDeque::from(vec![1_000 * S]);
        assert_eq!(c.read(Tx::NONE, "a"), Err(XsError::Timeout));
        assert_eq!(c.ring().now, REQUEST_TIMEOUT_NS);
        assert_eq!(c.ring().slow, [Op::Read]);
    }

    #[test]
    fn a_reply_nobody_asked_for_is_still_a_protocol_error() {
        let mut c = client();
        let bogus = wire::encode(Op::Read, 4242, 0, &[Part::Raw(b"?")]).unwrap();
        c.ring().rsp.extend(bogus);
        assert_eq!(c.read(Tx::NONE, "a"), Err(XsError::Protocol));
        assert_eq!(c.late_replies(), 0);
    }

    #[test]
    fn the_tail_of_a_timed_out_request_is_sent_before_the_next() {
        let mut c = client();
        let value = [b'v'; 200];
        {
            let d = c.ring();
            d.room = 20;
            d.stall_until = REQUEST_TIMEOUT_NS + 3 * S;
        }
        assert_eq!(c.write(Tx::NONE, "big", &value), Err(XsError::Timeout));
        assert!(c.ring().seen.is_empty(), "only part of the request reached the daemon");
        assert_eq!(c.read(Tx::NONE, "big"), Ok(Some(value.to_vec())));
        let seen: Vec<(Option<Op>, u32)> =
            c.ring().seen.iter().map(|m| (m.op(), m.header.req_id)).collect();
        assert_eq!(seen, [(Some(Op::Write), 1), (Some(Op::Read), 2)]);
        assert_eq!(c.late_replies(), 1);
    }

    #[test]
    fn abandoned_ids_are_bounded() {
        let mut c = client();
        c.ring().delays = (0..MAX_ABANDONED as u64 + 5).map(|_| 100_000 * S).collect();
        for _ in 0..MAX_ABANDONED + 5 {
            assert_eq!(c.read(Tx::NONE, "a"), Err(XsError::Timeout));
        }
        assert_eq!(c.abandoned.len(), MAX_ABANDONED);
        assert_eq!(c.abandoned.first(), Some(&6));
    }

    #[test]
    fn next_event_returns_queued_then_new_events_with_their_paths() {
        let mut c = client();
        let event = |path: &str, token: &str| {
            wire::encode(Op::WatchEvent, 0, 0, &[Part::Str(path), Part::Str(token)]).unwrap()
        };
        // One event arrives while a request waits for its reply: queued.
        c.ring().rsp.extend(event("/local/domain/3/x", "persist"));
        assert_eq!(c.read(Tx::NONE, "a"), Ok(Some(b"A".to_vec())));
        c.ring().rsp.extend(event("@releaseDomain", "domains"));
        assert_eq!(c.next_event(Some(S)), Ok(Some(("/local/domain/3/x".into(), "persist".into()))));
        assert_eq!(c.next_event(Some(S)), Ok(Some(("@releaseDomain".into(), "domains".into()))));
        assert_eq!(c.next_event(Some(S)), Ok(None));
        assert_eq!(c.ring().now, MS + S, "waited until the timeout (after the 1 ms read)");
        // A reply nobody asked for is still refused.
        c.ring().rsp.extend(wire::encode(Op::Read, 4242, 0, &[Part::Raw(b"?")]).unwrap());
        assert_eq!(c.next_event(Some(S)), Err(XsError::Protocol));
    }
}
