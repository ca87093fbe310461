//! The kernel's share of a delivery, without the gateway: one thread writes messages the size
//! of a data message to N loopback TCP connections in turn, `--per-write` messages per
//! `write` (1 is scenario (b), where every delivery goes to a different connection; more is
//! what a busy connection's coalesced writes look like), while one thread reads them all
//! back through tokio, as the load generator does. It reports the CPU time each side spends
//! per message: the writer's is the least a gateway can spend on a delivery that needs its
//! own `write`, before it does any work of its own, and the reader's is what the load
//! generator takes from the same two cores.
//!
//! ```sh
//! cargo run --release -p cdc-gateway-bench --example socket_floor -- \
//!     --connections 9000 --messages 400000 --size 350 --per-write 1
//! ```

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::io::AsyncReadExt;

#[derive(Parser)]
struct Args {
    /// Loopback connections the messages are spread over (both ends are in this process,
    /// which may open 20,000 files here).
    #[arg(long, default_value_t = 9_000)]
    connections: usize,
    /// Messages to write in all.
    #[arg(long, default_value_t = 400_000)]
    messages: usize,
    /// Bytes per message (a scenario (b) data message is about 350).
    #[arg(long, default_value_t = 350)]
    size: usize,
    /// Messages per `write` call: consecutive messages of one connection.
    #[arg(long, default_value_t = 1)]
    per_write: usize,
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let per_write = args.per_write.max(1);
    let writes = args.messages / per_write;
    let total = (writes * per_write * args.size) as u64;

    let listener = TcpListener::bind("127.0.0.1:0").context("bind on loopback")?;
    let address = listener.local_addr()?;
    let mut writers = Vec::with_capacity(args.connections);
    let mut readers = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let client = TcpStream::connect(address).context("connect on loopback")?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        writers.push(server);
        readers.push(client);
    }

    // The reader: one task per connection on a one-thread runtime, counting bytes.
    let reader = std::thread::spawn(move || -> anyhow::Result<(Duration, Duration)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let started = thread_cpu();
        let wall = Instant::now();
        runtime.block_on(async {
            let (counted, mut done) = tokio::sync::mpsc::unbounded_channel::<u64>();
            for stream in readers {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::net::TcpStream::from_std(stream).expect("register");
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || counted.send(n as u64).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(counted);
            let mut received = 0;
            while received < total {
                received += done
                    .recv()
                    .await
                    .expect("readers run until everything arrived");
            }
        });
        Ok((thread_cpu() - started, wall.elapsed()))
    });

    let message = vec![b'x'; args.size * per_write];
    let started = thread_cpu();
    let wall = Instant::now();
    for write in 0..writes {
        let stream = &mut writers[write % args.connections];
        stream.write_all(&message).context("write")?;
    }
    let writer_cpu = thread_cpu() - started;
    let writer_wall = wall.elapsed();
    let (reader_cpu, reader_wall) = reader.join().expect("reader thread")?;

    let messages = (writes * per_write) as f64;
    let per_message = |cpu: Duration| cpu.as_nanos() as f64 / messages;
    println!(
        "{} messages of {} bytes, {} per write, over {} connections",
        writes * per_write,
        args.size,
        per_write,
        args.connections
    );
    println!(
        "writer  {:>8.0} ns CPU per message ({:.2} s CPU in {:.2} s)",
        per_message(writer_cpu),
        writer_cpu.as_secs_f64(),
        writer_wall.as_secs_f64()
    );
    println!(
        "reader  {:>8.0} ns CPU per message ({:.2} s CPU in {:.2} s)",
        per_message(reader_cpu),
        reader_cpu.as_secs_f64(),
        reader_wall.as_secs_f64()
    );
    println!(
        "both    {:>8.0} messages/s at most on two cores kept busy by nothing else",
        2e9 / (per_message(writer_cpu) + per_message(reader_cpu))
    );
    Ok(())
}
