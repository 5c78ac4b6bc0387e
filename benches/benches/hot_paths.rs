//! Micro-benchmarks of the hot paths: the codec on a pushed batch, a late operation inserted
//! into a long strand (canonical order and view replay), and job status churn through a
//! mailbox. Store apply per backend is in `stores.rs`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use syncline_core::channel::{JobHandle, JobStatus, Mailbox};
use syncline_core::protocol::{Body, Codec, Envelope, Push, Request, StrandUpdate};
use syncline_core::queue::JobKind;
use syncline_core::testing::op_at;
use syncline_core::{JobId, MemoryStore, Operation, Ordinal, Reactor, ReactorId, StrandId};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A pushed batch of `n` operations over 8 documents, as the pusher builds it.
fn push_batch(n: u64) -> Envelope {
    let ops: Vec<Arc<Operation>> = (0..n)
        .map(|i| {
            Arc::new(op_at(
                &format!("bench/{}", i % 8),
                i,
                1_700_000_000_000 + i,
                "bench",
            ))
        })
        .collect();
    Envelope {
        v: 1,
        id: 7,
        body: Body::Request(Request::Push(Push {
            job_id: JobId::from_random_bytes([3; 16]),
            strands: StrandUpdate::group(&ops),
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for n in [1u64, 1024] {
        let env = push_batch(n);
        for codec in [Codec::Binary, Codec::Json] {
            let name = format!("{codec:?}").to_lowercase();
            let frame = codec.encode(&env).expect("encodes");
            g.throughput(Throughput::Elements(n));
            g.bench_function(format!("encode/{name}/push_{n}"), |b| {
                b.iter(|| codec.encode_ref(&env.as_ref()).expect("encodes"))
            });
            g.bench_function(format!("decode/{name}/push_{n}"), |b| {
                b.iter(|| Codec::decode(&frame).expect("decodes"))
            });
        }
    }
    g.finish();
}

static LATE: AtomicU64 = AtomicU64::new(1 << 40);

/// A reactor on the memory store whose strand `bench/late` holds `n` operations.
async fn long_strand(n: u64) -> Reactor {
    let reactor = Reactor::builder(ReactorId::new("bench").expect("an id"))
        .store(Arc::new(MemoryStore::new()))
        .start()
        .await
        .expect("a reactor");
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let ops = chunk
            .iter()
            .map(|&i| Arc::new(op_at("bench/late", i, 1_700_000_000_000 + i * 10, "peer")))
            .collect();
        apply(&reactor, ops).await;
    }
    reactor
}

async fn apply(reactor: &Reactor, ops: Vec<Arc<Operation>>) {
    let ticket = reactor
        .queue()
        .enqueue(
            JobId::from_random_bytes([9; 16]),
            JobKind::Apply {
                ops,
                source: ReactorId::new("peer").expect("an id"),
                meta: vec![],
            },
        )
        .await
        .expect("queued");
    ticket.wait().await.expect("applied");
}

fn late_insert(c: &mut Criterion) {
    let rt = runtime();
    let strand = StrandId::parse("bench/late", None, None).expect("a strand");
    let mut g = c.benchmark_group("late_insert");
    g.sample_size(20);
    for n in [1_000u64, 10_000] {
        let reactor = rt.block_on(long_strand(n));
        rt.block_on(reactor.document(&strand)).expect("a view");
        // An operation stamped in the middle of the strand: stored where it sorts, then the
        // view replays from the nearest snapshot before it.
        g.bench_function(format!("middle_of_{n}_then_read"), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    let k = LATE.fetch_add(1, Ordering::Relaxed);
                    Arc::new(op_at(
                        "bench/late",
                        k,
                        1_700_000_000_000 + n * 5 + 1,
                        "peer",
                    ))
                },
                |op| {
                    let (reactor, strand) = (reactor.clone(), strand.clone());
                    async move {
                        apply(&reactor, vec![op]).await;
                        reactor.document(&strand).await.expect("a view")
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn mailbox_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("mailbox");
    let ops: Vec<Arc<Operation>> = (0..16)
        .map(|i| Arc::new(op_at("bench/m", i, 1_700_000_000_000 + i, "a")))
        .collect();
    let mut next = 0u64;
    g.throughput(Throughput::Elements(1));
    // One outbox job's life: queued in the mailbox, watched, moved through every status, gone.
    g.bench_function("job_lifecycle", |b| {
        let mailbox: Mailbox<JobHandle> = Mailbox::new();
        mailbox.added(|_| {});
        mailbox.removed(|_| {});
        b.iter(|| {
            next += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&next.to_be_bytes());
            let job = JobHandle::new(
                JobId::from_random_bytes(id),
                ops.clone(),
                (Ordinal(next), Ordinal(next + 16)),
            );
            job.on(|_, _, _| {});
            mailbox.push(job.clone());
            for s in [
                JobStatus::TransportPending,
                JobStatus::ExecutionPending,
                JobStatus::Applied,
            ] {
                job.advance(s).expect("forward");
            }
            mailbox.remove(&job)
        })
    });
    g.finish();
}

criterion_group!(benches, codec, late_insert, mailbox_churn);
criterion_main!(benches);
