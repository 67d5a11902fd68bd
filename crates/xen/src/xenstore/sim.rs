//! A simulated xenstored on a virtual clock, for the host tests of the
//! client and of what is built on it (`crate::dom0`): it answers requests in
//! order, each after its configured delay, may leave only a few bytes of
//! request ring free until some time, fires watches (once on registration
//! and on every write at or below the watched path, as xenstored does), and
//! applies writes scheduled for given times (another domain, here dom0,
//! writing while the client waits).

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use super::client::StoreRing;
use super::wire::{self, Message, Op, Part, Reassembler, XsError};

pub const MS: u64 = 1_000_000;
pub const S: u64 = 1_000 * MS;

/// The simulated daemon (the client's [`StoreRing`]).
#[derive(Default)]
pub struct SimDaemon {
    pub now: u64,
    requests: Reassembler,
    /// Every request received, in order.
    pub seen: Vec<Message>,
    /// Reply delays, in order (default: 1 ms).
    pub delays: VecDeque<u64>,
    last_reply_at: u64,
    scheduled: VecDeque<(u64, Vec<u8>)>,
    pub rsp: VecDeque<u8>,
    /// Bytes the request ring takes before `stall_until` (then: all).
    pub room: usize,
    pub stall_until: u64,
    pub store: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Registered watches: (path, token).
    pub watches: Vec<(Vec<u8>, Vec<u8>)>,
    /// Writes by another domain, applied at the given times.
    pub timed_writes: VecDeque<(u64, Vec<u8>, Vec<u8>)>,
    /// Send no watch events at all (as xenstored withholds those the
    /// watcher may not read).
    pub drop_events: bool,
    /// The requests the client reported slow ([`StoreRing::slow`]).
    pub slow: Vec<Op>,
}

impl SimDaemon {
    /// Schedules a write of `value` at `path` by another domain at `at` ns.
    pub fn write_at(&mut self, at: u64, path: &str, value: &[u8]) {
        self.timed_writes.push_back((at, path.as_bytes().to_vec(), value.to_vec()));
        self.timed_writes.make_contiguous().sort_by_key(|(t, ..)| *t);
    }

    /// Queues `bytes` for the client at `at` (never before what is
    /// already queued: the daemon answers in order).
    fn schedule(&mut self, at: u64, bytes: Vec<u8>) {
        let at = at.max(self.last_reply_at);
        self.last_reply_at = at;
        self.scheduled.push_back((at, bytes));
    }

    /// Fires the watches on `path` or a parent of it.
    fn fire(&mut self, path: &[u8], at: u64) {
        if self.drop_events {
            return;
        }
        let hits: Vec<Vec<u8>> = self
            .watches
            .iter()
            .filter(|(w, _)| {
                path.starts_with(w) && (path.len() == w.len() || path.get(w.len()) == Some(&b'/'))
            })
            .map(|(_, t)| t.clone())
            .collect();
        for token in hits {
            let p = core::str::from_utf8(path).unwrap_or_default();
            let t = core::str::from_utf8(&token).unwrap_or_default();
            if let Ok(ev) = wire::encode(Op::WatchEvent, 0, 0, &[Part::Str(p), Part::Str(t)]) {
                self.schedule(at, ev);
            }
        }
    }

    /// Applies the scheduled writes due by now.
    fn apply_timed(&mut self) {
        while self.timed_writes.front().is_some_and(|(at, ..)| *at <= self.now) {
            if let Some((at, path, value)) = self.timed_writes.pop_front() {
                self.store.insert(path.clone(), value);
                self.fire(&path, at);
            }
        }
    }

    fn answer(&mut self, msg: Message) {
        let mut fields = msg.payload.splitn(2, |&b| b == 0);
        let path = fields.next().unwrap_or_default().to_vec();
        let rest = fields.next().unwrap_or_default().to_vec();
        let id = msg.header.req_id;
        let delay = self.delays.pop_front().unwrap_or(MS);
        let at = self.now + delay;
        let ok = |op| wire::encode(op, id, 0, &[Part::Str("OK")]);
        let token = || rest.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        let (reply, fire) = match msg.op() {
            Some(Op::Read) => match self.store.get(&path) {
                Some(v) => (wire::encode(Op::Read, id, 0, &[Part::Raw(v)]), false),
                None => (wire::encode(Op::Error, id, 0, &[Part::Str("ENOENT")]), false),
            },
            Some(Op::Write) => {
                self.store.insert(path.clone(), rest.clone());
                (ok(Op::Write), true)
            }
            // xenstored fires a new watch once, after its reply.
            Some(Op::Watch) => {
                self.watches.push((path.clone(), token()));
                (ok(Op::Watch), true)
            }
            Some(Op::Unwatch) => {
                let t = token();
                self.watches.retain(|(p, w)| !(p == &path && w == &t));
                (ok(Op::Unwatch), false)
            }
            _ => (wire::encode(Op::Error, id, 0, &[Part::Str("ENOSYS")]), false),
        };
        self.schedule(at, reply.unwrap());
        if fire {
            self.fire(&path, at);
        }
        self.seen.push(msg);
    }

    fn deliver(&mut self) {
        self.apply_timed();
        while self.scheduled.front().is_some_and(|(at, _)| *at <= self.now) {
            if let Some((_, bytes)) = self.scheduled.pop_front() {
                self.rsp.extend(bytes);
            }
        }
    }
}

impl StoreRing for SimDaemon {
    fn write(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        let n = if self.now < self.stall_until { bytes.len().min(self.room) } else { bytes.len() };
        if self.now < self.stall_until {
            self.room -= n;
        }
        let mut rest = &bytes[..n];
        while !rest.is_empty() {
            let (used, msg) = self.requests.push(rest)?;
            rest = &rest[used..];
            if let Some(msg) = msg {
                self.answer(msg);
            }
        }
        Ok(n)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        self.deliver();
        let n = buf.len().min(self.rsp.len());
        for (slot, b) in buf.iter_mut().zip(self.rsp.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }

    fn notify(&mut self) -> Result<(), XsError> {
        Ok(())
    }

    fn now_ns(&mut self) -> Result<u64, XsError> {
        Ok(self.now)
    }

    fn slow(&mut self, op: Op) {
        self.slow.push(op);
    }

    fn wait(&mut self, deadline_ns: u64) -> Result<(), XsError> {
        let stall = Some(self.stall_until).filter(|&t| t > self.now);
        let reply = self.scheduled.front().map(|(at, _)| *at);
        let write = self.timed_writes.front().map(|(at, ..)| *at);
        match [stall, reply, write].into_iter().flatten().min() {
            Some(next) if next < deadline_ns => {
                self.now = self.now.max(next);
                Ok(())
            }
            _ => {
                self.now = self.now.max(deadline_ns);
                Err(XsError::Timeout)
            }
        }
    }
}
