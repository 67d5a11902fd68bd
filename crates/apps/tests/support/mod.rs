//! Test support for the guest drivers (never built into a guest image):
//! an in-memory [`Platform`] over the vchan simulator, with a manual clock,
//! scripted console input, captured console output, deterministic entropy,
//! configuration items, a persist log and a name map; plus helpers for the
//! peers on the other end of the drivers' links.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use portcullis_apps::link::Link;
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::totp::{Algorithm, OperatorSecret};
use portcullis_platform::{
    Backend, ConfigItem, DomId, IoCause, IoDetail, IoOp, Platform, PlatformError, Port,
};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{AuditAck, AuditRecord};
use portcullis_vchan::sim::{Hypervisor, SimBackend};
use portcullis_vchan::{ClientConfig, ServerConfig, Vchan, VchanError, Wait};

pub const T0: u64 = 1_700_000_000;
pub const DOM0: DomId = DomId(0);
pub const CRYPTOD: DomId = DomId(1);
pub const ENTROPYD: DomId = DomId(2);
pub const UNLOCKER: DomId = DomId(5);
pub const POLICY_PD: DomId = DomId(7);
pub const SECRET: &[u8] = b"12345678901234567890";
pub const KEK: [u8; 32] = [0x42; 32];
pub const ACL: &str = "\
allow vm=unlocker domid=5 scopes=luks:unlock aud=unlock_agent volumes=data
allow vm=policy_pd domid=7 scopes=net:modify,net:read,token:revoke aud=fw0,policy_pd,cryptod
";

/// A test's look at each blob as the fake platform stores it.
pub type PersistHook = Box<dyn FnMut(&[u8]) + Send>;

/// An in-memory platform for one simulated domain.
pub struct FakePlatform {
    pub hv: Hypervisor,
    backend: SimBackend,
    name: String,
    /// The monotonic clock, advanced by the test and by timed-out waits.
    pub mono_ns: u64,
    /// Wall-clock time at monotonic zero.
    pub epoch: u64,
    /// Lines the operator will type, in order (or errors to return).
    pub console_in: VecDeque<Result<String, PlatformError>>,
    /// Everything written to the console.
    pub console_out: String,
    /// How many `console_wait_input` calls answer "no input yet" (each
    /// advancing the clock by its timeout) before the console has input.
    pub console_idle: usize,
    /// Called with the count of idle waits so far, after each.
    pub on_console_idle: Option<Box<dyn FnMut(usize) + Send>>,
    idle_waits: usize,
    entropy_state: u64,
    /// Make the hardware entropy source fail (fail closed).
    pub entropy_broken: bool,
    /// How many times the guest asked for hardware entropy.
    pub hw_entropy_calls: usize,
    pub config: HashMap<&'static str, Vec<u8>>,
    /// Every successful persist call, in order.
    pub persisted: Vec<(ConfigItem, Vec<u8>)>,
    /// Make persist fail with this error (nothing is stored), e.g. an I/O
    /// timeout or `Unsupported`.
    pub persist_error: Option<PlatformError>,
    /// Persist calls, failed ones included.
    pub persist_attempts: usize,
    /// Called with each blob as it is stored (before persist returns).
    pub on_persist: Option<PersistHook>,
    /// Domain names the store resolves.
    pub names: HashMap<String, DomId>,
    /// Names that appear (are added to `names`) once the monotonic clock
    /// reaches the time, nanoseconds.
    pub names_at: Vec<(u64, String, DomId)>,
    /// dom0's measurements of other domains' images.
    pub measurements: HashMap<DomId, [u8; 32]>,
    /// How many times the guest asked for a measurement.
    pub measurement_reads: usize,
    /// The platform tells of names changes (as Xen's names watch does):
    /// `names_changed` is true once `names_at` entries came due.
    pub watch_names: bool,
    /// How many times the guest asked whether the names changed.
    pub names_asked: usize,
}

impl FakePlatform {
    pub fn new(hv: &Hypervisor, dom: DomId, name: &str) -> FakePlatform {
        FakePlatform {
            hv: hv.clone(),
            backend: hv.domain(dom),
            name: name.into(),
            mono_ns: 0,
            epoch: T0,
            console_in: VecDeque::new(),
            console_out: String::new(),
            console_idle: 0,
            on_console_idle: None,
            idle_waits: 0,
            entropy_state: 0x9e37_79b9_7f4a_7c15 ^ u64::from(dom.0),
            entropy_broken: false,
            hw_entropy_calls: 0,
            config: HashMap::new(),
            persisted: Vec::new(),
            persist_error: None,
            persist_attempts: 0,
            on_persist: None,
            names: HashMap::new(),
            names_at: Vec::new(),
            measurements: HashMap::new(),
            measurement_reads: 0,
            watch_names: false,
            names_asked: 0,
        }
    }

    pub fn with_names(mut self, names: &[(&str, DomId)]) -> Self {
        for (n, d) in names {
            self.names.insert((*n).into(), *d);
        }
        self
    }

    pub fn with_config(mut self, item: ConfigItem, bytes: &[u8]) -> Self {
        self.config.insert(item.name(), bytes.to_vec());
        self
    }

    /// Seeds the fake hardware entropy (another boot of the same domain
    /// draws other bytes).
    pub fn with_entropy_seed(mut self, seed: u64) -> FakePlatform {
        self.entropy_state = seed | 1;
        self
    }

    pub fn settings(self, text: &str) -> Self {
        self.with_config(ConfigItem::Settings, text.as_bytes())
    }

    pub fn advance(&mut self, d: Duration) {
        self.mono_ns = self.mono_ns.saturating_add(d.as_nanos() as u64);
    }

    /// Moves the `names_at` entries due by now into `names`; how many.
    fn names_due(&mut self) -> usize {
        let now = self.mono_ns;
        let before = self.names_at.len();
        for (_, n, d) in self.names_at.iter().filter(|(at, ..)| *at <= now) {
            self.names.insert(n.clone(), *d);
        }
        self.names_at.retain(|(at, ..)| *at > now);
        before - self.names_at.len()
    }

    /// How many `console_wait_input` calls answered "no input yet".
    pub fn idle_waits(&self) -> usize {
        self.idle_waits
    }

    /// Console lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> usize {
        self.console_out.lines().filter(|l| l.contains(needle)).count()
    }
}

impl Platform for FakePlatform {
    type Backend = SimBackend;

    fn backend(&self) -> SimBackend {
        self.backend.clone()
    }
    fn domid(&self) -> DomId {
        self.backend.domid()
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn now_unix(&self) -> u64 {
        self.epoch + self.mono_ns / 1_000_000_000
    }
    fn monotonic_ns(&self) -> u64 {
        self.mono_ns
    }
    fn console_write(&mut self, text: &str) {
        self.console_out.push_str(text);
    }
    fn console_read_line(
        &mut self,
        buf: &mut [u8],
        _echo: bool,
        _timeout: Option<Duration>,
    ) -> Result<usize, PlatformError> {
        match self.console_in.pop_front() {
            None => Err(PlatformError::Console),
            Some(Err(e)) => Err(e),
            Some(Ok(line)) => {
                let n = line.len().min(buf.len());
                buf[..n].copy_from_slice(&line.as_bytes()[..n]);
                Ok(n)
            }
        }
    }
    fn console_wait_input(&mut self, timeout: Duration) -> Result<bool, PlatformError> {
        if self.idle_waits >= self.console_idle {
            return Ok(true);
        }
        self.idle_waits += 1;
        self.advance(timeout);
        if let Some(hook) = self.on_console_idle.as_mut() {
            hook(self.idle_waits);
        }
        Ok(false)
    }
    fn hw_entropy(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        self.hw_entropy_calls += 1;
        if self.entropy_broken {
            return Err(PlatformError::NoEntropy);
        }
        for b in buf.iter_mut() {
            let mut x = self.entropy_state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.entropy_state = x;
            *b = x as u8;
        }
        Ok(())
    }
    fn config(&mut self, item: ConfigItem, buf: &mut [u8]) -> Result<usize, PlatformError> {
        let v = self.config.get(item.name()).ok_or(PlatformError::MissingConfig)?;
        let dst = buf.get_mut(..v.len()).ok_or(PlatformError::BadConfig)?;
        dst.copy_from_slice(v);
        Ok(v.len())
    }
    fn persist(&mut self, item: ConfigItem, bytes: &[u8]) -> Result<(), PlatformError> {
        self.persist_attempts += 1;
        if let Some(e) = self.persist_error {
            return Err(e);
        }
        if let Some(hook) = self.on_persist.as_mut() {
            hook(bytes);
        }
        self.persisted.push((item, bytes.to_vec()));
        self.config.insert(item.name(), bytes.to_vec());
        Ok(())
    }
    fn measurement(&mut self, dom: DomId) -> Result<[u8; 32], PlatformError> {
        self.measurement_reads += 1;
        self.measurements.get(&dom).copied().ok_or(PlatformError::MissingConfig)
    }
    fn resolve(&mut self, name: &str) -> Result<DomId, PlatformError> {
        self.names_due();
        self.names.get(name).copied().ok_or(PlatformError::UnknownDomain)
    }
    fn names_changed(&mut self) -> bool {
        self.names_asked += 1;
        self.watch_names && self.names_due() > 0
    }
    fn wait_any(
        &mut self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, PlatformError> {
        for port in ports {
            match self.backend.wait(*port, Some(Duration::ZERO)) {
                Ok(Wait::Event) => return Ok(Some(*port)),
                Ok(Wait::TimedOut) => {}
                Err(_) => {
                    return Err(PlatformError::Io(IoDetail::new(
                        IoOp::EventWait,
                        IoCause::Transport,
                    )))
                }
            }
        }
        // Nothing pending: the time passes at once.
        self.advance(timeout.unwrap_or(Duration::from_secs(1)));
        Ok(None)
    }
    fn shutdown(&mut self, code: u8) -> ! {
        panic!("guest shut down with code {code}");
    }
}

/// cryptod's sealed state for the tests: one operator "alice" (SHA-1, 8 digits).
pub fn sealed_state() -> SealedState {
    SealedState {
        root_key: [0x11; 32],
        master_secret: [0x22; 32],
        operators: vec![OperatorSecret::new("alice", SECRET, Algorithm::Sha1, 8).unwrap()],
        acl: ACL.into(),
        last_steps: vec![],
        failures: vec![],
        keyset_version: 0,
        revocation_serial: 0,
        revoked: vec![],
        audit_head: None,
        admin_key: None,
        admin_seq: 0,
        recovery: vec![],
        sections: vec![],
    }
}

/// The sealed state of [`sealed_state`] with another ACL.
pub fn sealed_blob_with_acl(acl: &str) -> Vec<u8> {
    let mut st = sealed_state();
    st.acl = acl.into();
    sealed::seal(&st, &KEK, &[7; 12]).unwrap()
}

pub fn sealed_blob() -> Vec<u8> {
    sealed::seal(&sealed_state(), &KEK, &[7; 12]).unwrap()
}

/// alice's code at `time`.
pub fn code_at(time: u64) -> String {
    format!("{:08}", portcullis_authority::totp::totp(SECRET, Algorithm::Sha1, 8, time))
}

/// The client end of `server`'s vchan `port`, as domain `dom`.
pub fn client(hv: &Hypervisor, dom: DomId, server: DomId, port: u32) -> Link<SimBackend> {
    Link::new(Vchan::client(hv.domain(dom), ClientConfig { server, port }).unwrap())
}

/// Like [`client`], but the error if the server has not published a ring.
pub fn try_client(
    hv: &Hypervisor,
    dom: DomId,
    server: DomId,
    port: u32,
) -> Result<Link<SimBackend>, VchanError> {
    Vchan::client(hv.domain(dom), ClientConfig { server, port }).map(Link::new)
}

/// A server end published by `dom` for `client` on `port`.
pub fn server(hv: &Hypervisor, dom: DomId, client: DomId, port: u32) -> Link<SimBackend> {
    let config = ServerConfig { client, port, read_min: 16384, write_min: 16384 };
    Link::new(Vchan::server(hv.domain(dom), config).unwrap())
}

/// Every whole message waiting on `link`.
pub fn drain(link: &mut Link<SimBackend>) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = link.poll() {
        out.push(m);
    }
    out
}

/// The audit records of the batch in an `audit_log` message (its seal
/// is checked by `audit verify`, not here).
pub fn records_of(msg: &Message) -> Vec<AuditRecord> {
    let Message::AuditLog(l) = msg else { panic!("not an audit batch: {msg:?}") };
    l.records.iter().map(|r| AuditRecord::from_cbor(r).unwrap()).collect()
}

/// A collector that reads the batches on its link and (if `ack`)
/// acknowledges the last one; returns the records read.
pub fn collect(link: &mut Link<SimBackend>, ack: bool) -> Vec<AuditRecord> {
    let records: Vec<AuditRecord> = drain(link).iter().flat_map(records_of).collect();
    if ack {
        if let Some(last) = records.last() {
            link.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
        }
    }
    records
}

/// An in-process cryptod decision core, seeded and ready.
pub fn cryptod() -> portcullis_authority::Authority {
    use portcullis_authority::{Authority, Config, PeerId};
    let mut a = Authority::new(Config::default(), sealed_state(), T0).unwrap();
    let chunk = portcullis_proto::msg::EntropyPub {
        drbg_version: "test".into(),
        seq: 1,
        nonce: vec![1; 16],
        entropy_chunk: zeroize::Zeroizing::new(vec![0x5a; 64]),
        timestamp: T0,
    };
    a.entropy(&PeerId::new(2, "entropyd"), &chunk, T0, b"hw");
    assert!(a.is_ready());
    a
}

/// cryptod's answer to `peer` as the client gets it: decided, its records
/// acked by the collector, the held answer released.
pub fn ask_as(
    a: &mut portcullis_authority::Authority,
    peer: &portcullis_authority::PeerId,
    msg: &Message,
    now: u64,
) -> Message {
    use portcullis_authority::Request;
    let out = a.handle_request(peer, Request::from_message(msg).unwrap(), now, b"");
    if let Some(answer) = out.response {
        return answer;
    }
    a.seal_audit(now);
    let last = records_of(a.pending_audit().last().unwrap()).pop().unwrap();
    let mut released =
        a.collector_ack(&AuditAck { chain_id: last.chain_id, seq: last.seq }).released;
    assert_eq!(released.len(), 1);
    released.remove(0).1
}

/// A verifier's trust in `a`'s root key, with `a`'s current keyset.
pub fn trust(a: &mut portcullis_authority::Authority) -> portcullis_apps::trust::Trust {
    use portcullis_proto::msg::{KeysetReq, RequestId};
    let root = a.root_public();
    let kid = portcullis_authority::keys::kid_for(&root);
    let mut t = portcullis_apps::trust::Trust::new(root, &kid);
    let peer = portcullis_authority::PeerId::new(7, "policy_pd");
    match ask_as(a, &peer, &KeysetReq { request_id: RequestId([1; 16]) }.into(), T0) {
        Message::Keyset(k) => t.accept_keyset(&k.signed).unwrap(),
        other => panic!("{other:?}"),
    }
    t
}
