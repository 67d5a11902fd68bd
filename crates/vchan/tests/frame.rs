//! Framing over a trickling in-memory stream and over a real vchan.

use std::collections::VecDeque;
use std::time::Duration;

use portcullis_vchan::frame::{DEFAULT_MAX_FRAME, HEADER_LEN};
use portcullis_vchan::sim::Hypervisor;
use portcullis_vchan::{
    ClientConfig, DomId, FrameError, FrameReader, FrameWriter, ServerConfig, Transport, Vchan,
    VchanError,
};
use proptest::prelude::*;

const SAFETY: Option<Duration> = Some(Duration::from_secs(20));

/// A stream that moves at most `step` bytes per call and answers "nothing
/// yet" on every other call.
struct Trickle {
    input: VecDeque<u8>,
    output: Vec<u8>,
    /// Room left for output (None: unlimited).
    room: Option<usize>,
    step: usize,
    stall: bool,
    peer_closed: bool,
    aborted: bool,
}

impl Trickle {
    fn new(input: &[u8], step: usize) -> Self {
        Trickle {
            input: input.iter().copied().collect(),
            output: Vec::new(),
            room: None,
            step,
            stall: false,
            peer_closed: false,
            aborted: false,
        }
    }

    fn stalled(&mut self) -> bool {
        self.stall = !self.stall;
        self.stall
    }
}

impl Transport for Trickle {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        if self.aborted {
            return Err(VchanError::Closed);
        }
        if self.stalled() {
            return Ok(0);
        }
        let n = buf.len().min(self.step).min(self.input.len());
        if n == 0 && self.peer_closed && !buf.is_empty() {
            return Err(VchanError::PeerClosed);
        }
        for b in buf.iter_mut().take(n) {
            *b = self.input.pop_front().unwrap();
        }
        Ok(n)
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        if self.peer_closed {
            return Err(VchanError::PeerClosed);
        }
        if self.stalled() {
            return Ok(0);
        }
        let mut n = data.len().min(self.step);
        if let Some(room) = self.room.as_mut() {
            n = n.min(*room);
            *room -= n;
        }
        self.output.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn abort(&mut self) {
        self.aborted = true;
    }
}

fn framed(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Polls until `count` frames are read (or an error).
fn read_frames(t: &mut Trickle, max: usize, count: usize) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut reader = FrameReader::new(vec![0u8; max]);
    let mut frames = Vec::new();
    let mut idle = 0;
    while frames.len() < count {
        match reader.poll(t)? {
            Some(f) => frames.push(f.to_vec()),
            None => {
                idle += 1;
                assert!(idle < 10_000_000, "reader made no progress");
            }
        }
    }
    Ok(frames)
}

#[test]
fn one_byte_reads() {
    let big = vec![0xabu8; 1000];
    let frames: [&[u8]; 4] = [b"hello", b"", &big, b"x"];
    let mut t = Trickle::new(&framed(&frames), 1);
    let got = read_frames(&mut t, 1000, 4).unwrap();
    assert_eq!(got, frames.map(|f| f.to_vec()));
}

#[test]
fn header_is_big_endian() {
    let mut w = FrameWriter::new(vec![0u8; 300]);
    let mut t = Trickle::new(&[], 1000);
    w.push(&[7u8; 258]).unwrap();
    while !w.flush(&mut t).unwrap() {}
    assert_eq!(&t.output[..HEADER_LEN], &[0, 0, 1, 2]);
    assert_eq!(t.output.len(), HEADER_LEN + 258);
}

/// A stream with unlimited room that records each write.
#[derive(Default)]
struct Writes(Vec<Vec<u8>>);

impl Transport for Writes {
    fn recv(&mut self, _: &mut [u8]) -> Result<usize, VchanError> {
        Ok(0)
    }
    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        self.0.push(data.to_vec());
        Ok(data.len())
    }
    fn abort(&mut self) {}
}

#[test]
fn a_frame_goes_out_in_one_write() {
    // Header and payload in one write: a waiting peer gets one event per
    // frame. Two writes would wake it for the header, and again for the
    // payload once it had asked to hear about the next write.
    let mut w = FrameWriter::new(vec![0u8; 100 + HEADER_LEN]);
    let mut t = Writes::default();
    for payload in [&[9u8; 100][..], b"", b"abc"] {
        w.push(payload).unwrap();
        assert!(w.flush(&mut t).unwrap());
        assert_eq!(t.0.pop(), Some(framed(&[payload])));
        assert!(t.0.is_empty());
    }
    // A payload within HEADER_LEN of the buffer's length still goes out
    // whole, its header first.
    let mut w = FrameWriter::new(vec![0u8; 100]);
    w.push(&[7u8; 100]).unwrap();
    assert!(w.flush(&mut t).unwrap());
    assert_eq!(t.0.concat(), framed(&[&[7u8; 100]]));
    assert_eq!(t.0.len(), 2);
}

#[test]
fn oversize_length_aborts() {
    let mut t = Trickle::new(&framed(&[&[1u8; 11]]), 3);
    assert_eq!(read_frames(&mut t, 10, 1), Err(FrameError::Oversize { len: 11, max: 10 }));
    assert!(t.aborted);
    // A limit below the buffer size is honoured too.
    let mut t = Trickle::new(&[0xff, 0xff, 0xff, 0xff], 4);
    let mut r = FrameReader::with_max(vec![0u8; 100], 50);
    assert_eq!(r.max(), 50);
    while !t.aborted {
        match r.poll(&mut t) {
            Ok(None) => {}
            Err(e) => assert_eq!(e, FrameError::Oversize { len: u32::MAX, max: 50 }),
            Ok(Some(_)) => panic!("accepted an oversize frame"),
        }
    }
}

#[test]
fn close_inside_a_frame_is_truncation() {
    let whole = framed(&[b"complete", b"cut short"]);
    for cut in 1..whole.len() {
        let mut t = Trickle::new(&whole[..cut], 1);
        t.peer_closed = true;
        let result = read_frames(&mut t, 64, 2);
        let first_end = HEADER_LEN + 8;
        if cut == first_end {
            // Closed exactly between frames: a clean end.
            assert_eq!(result, Err(FrameError::Vchan(VchanError::PeerClosed)));
        } else {
            assert_eq!(result, Err(FrameError::TruncatedFrame), "cut at {cut}");
        }
    }
}

#[test]
fn writer_partial_sends_and_truncation() {
    let mut w = FrameWriter::new(vec![0u8; 64]);
    let mut t = Trickle::new(&[], 1);
    w.push(b"abc").unwrap();
    assert_eq!(w.push(b"d"), Err(FrameError::Busy));
    let mut calls = 0;
    while !w.flush(&mut t).unwrap() {
        calls += 1;
    }
    assert!(calls >= 7);
    assert_eq!(t.output, framed(&[b"abc"]));
    assert_eq!(w.push(&[0u8; 65]), Err(FrameError::TooLarge));

    // The peer leaves after part of a frame went out.
    let mut t = Trickle::new(&[], 2);
    t.room = Some(5);
    w.push(b"0123456789").unwrap();
    while !w.flush(&mut t).unwrap_or(true) && t.room != Some(0) {}
    t.peer_closed = true;
    assert_eq!(w.flush(&mut t), Err(FrameError::TruncatedFrame));
    assert!(!w.is_pending());
    // Leaving before anything of a frame went out is a plain close.
    w.push(b"x").unwrap();
    assert_eq!(w.flush(&mut t), Err(FrameError::Vchan(VchanError::PeerClosed)));
}

proptest! {
    #[test]
    fn any_frames_any_steps_round_trip(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
        step in 1usize..40,
    ) {
        let mut w = FrameWriter::new(vec![0u8; 300]);
        let mut t = Trickle::new(&[], step);
        for p in &payloads {
            w.push(p).unwrap();
            while !w.flush(&mut t).unwrap() {}
        }
        let mut r = Trickle::new(&t.output, step);
        let got = read_frames(&mut r, 300, payloads.len()).unwrap();
        prop_assert_eq!(got, payloads);
    }
}

#[test]
fn max_size_frames_over_a_small_vchan() {
    let hv = Hypervisor::new();
    let (server_dom, client_dom) = (DomId(1), DomId(2));
    let cfg = ServerConfig { client: client_dom, port: 1, read_min: 1024, write_min: 2048 };
    let mut server = Vchan::server(hv.domain(server_dom), cfg).unwrap();
    let hv2 = hv.clone();
    let payloads: Vec<Vec<u8>> = (0..4u8)
        .map(|i| (0..DEFAULT_MAX_FRAME).map(|j| (j as u8) ^ i).collect())
        .chain([Vec::new(), b"bye".to_vec()])
        .collect();
    let expect = payloads.clone();
    let sender = std::thread::spawn(move || {
        let ccfg = ClientConfig { server: server_dom, port: 1 };
        let mut client = Vchan::client_wait(hv2.domain(client_dom), ccfg, SAFETY).unwrap();
        let mut w = FrameWriter::new(vec![0u8; DEFAULT_MAX_FRAME]);
        for p in &payloads {
            w.send_blocking(&mut client, p, SAFETY).unwrap();
        }
        // Then an oversize header: the server must refuse and close.
        client.write_all(&[0, 1, 0, 1], SAFETY).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(client.read_blocking(&mut byte, SAFETY), Err(VchanError::PeerClosed));
    });
    let mut r = FrameReader::new(vec![0u8; DEFAULT_MAX_FRAME]);
    for p in &expect {
        let got = r.recv_blocking(&mut server, SAFETY).unwrap();
        assert!(got == &p[..]);
    }
    assert_eq!(
        r.recv_blocking(&mut server, SAFETY),
        Err(FrameError::Oversize { len: 65537, max: DEFAULT_MAX_FRAME })
    );
    assert!(!server.is_open());
    sender.join().unwrap();
}
