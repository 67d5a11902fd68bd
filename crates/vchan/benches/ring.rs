//! In-process ring throughput over the simulator, for orders 10, 11, 16, 20.
//!
//! `pingpong/<order>`: one thread, the client fills the ring and the server
//! drains it, repeatedly (copy and protocol cost, no wake-ups).
//! `threads/<order>`: a writer and a reader thread with blocking waits
//! (adds event and scheduling cost).
//! Criterion prints the throughput of each as bytes per second.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_vchan::layout::Dir;
use portcullis_vchan::sim::{Hypervisor, SimBackend};
use portcullis_vchan::{ClientConfig, DomId, ServerConfig, Vchan};

const SERVER: DomId = DomId(1);
const CLIENT: DomId = DomId(2);
const WAIT: Option<Duration> = Some(Duration::from_secs(30));
/// Bytes moved per iteration.
const VOLUME: usize = 4 << 20;

/// Ring sizes (client-to-server, server-to-client) giving the left ring
/// `order`.
fn sizes(order: u8) -> (usize, usize) {
    match order {
        10 => (1024, 2048),
        11 => (2048, 1024),
        o => (1 << o, 1024),
    }
}

fn pair(order: u8) -> (Hypervisor, Vchan<SimBackend>, Vchan<SimBackend>) {
    let hv = Hypervisor::new();
    let (read_min, write_min) = sizes(order);
    let server = Vchan::server(
        hv.domain(SERVER),
        ServerConfig { client: CLIENT, port: 1, read_min, write_min },
    )
    .expect("server");
    let client =
        Vchan::client(hv.domain(CLIENT), ClientConfig { server: SERVER, port: 1 }).expect("client");
    assert_eq!(server.geometry().map(|g| g.order(Dir::Left)), Some(order));
    (hv, server, client)
}

fn pingpong(c: &mut Criterion) {
    let mut group = c.benchmark_group("pingpong");
    group.throughput(Throughput::Bytes(VOLUME as u64));
    for order in [10u8, 11, 16, 20] {
        let (_hv, mut server, mut client) = pair(order);
        let ring = 1usize << order;
        let data = vec![0x5au8; ring];
        let mut buf = vec![0u8; ring];
        group.bench_function(order.to_string(), |b| {
            b.iter(|| {
                let mut moved = 0;
                while moved < VOLUME {
                    let n = client.write(&data).expect("write");
                    let m = server.read(&mut buf).expect("read");
                    assert_eq!(n, m);
                    moved += m;
                }
            })
        });
    }
    group.finish();
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("threads");
    group.throughput(Throughput::Bytes(VOLUME as u64));
    group.sample_size(10);
    for order in [10u8, 11, 16, 20] {
        let (_hv, mut server, mut client) = pair(order);
        let chunk = (1usize << order).min(65536);
        group.bench_function(order.to_string(), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let data = vec![0xa5u8; chunk];
                        let mut left = VOLUME;
                        while left > 0 {
                            let n = left.min(chunk);
                            client.write_all(&data[..n], WAIT).expect("write");
                            left -= n;
                        }
                    });
                    let mut buf = vec![0u8; chunk];
                    let mut got = 0;
                    while got < VOLUME {
                        got += server.read_blocking(&mut buf, WAIT).expect("read");
                    }
                });
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pingpong, threads);
criterion_main!(benches);
