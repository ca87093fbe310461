//! The tests' view of a stack, in process: everything of tests/e2e/support.rs (clients, the
//! producer, HTTP helpers), with the broker replaced by librdkafka's mock cluster and the
//! gateway by `Gateway::run` on a thread of its own. The names the tests use (`start_stack`,
//! `Gateway`, `Stack`) are the same, so a test reads the same in both tiers.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use tokio_util::sync::CancellationToken;

use cdc_gateway::config::Cli;
use cdc_gateway::gateway::{Gateway as Core, Pages};

pub use crate::real::{http_get, order, unique, Client, Endpoint, Item, Producer, SseClient, WAIT};

/// A mock Kafka cluster in this process.
pub struct MockBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl MockBroker {
    pub fn start() -> Self {
        Self {
            cluster: MockCluster::new(1).expect("mock cluster"),
        }
    }

    pub fn brokers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.cluster
            .create_topic(name, partitions, 1)
            .expect("create topic");
    }

    pub fn producer(&self) -> Producer {
        Producer::new(&self.brokers())
    }
}

/// The gateway of the library, run on its own thread and runtime, so that a test may block
/// on it (`wait_exit`) as it would on a process.
pub struct Gateway {
    addr: SocketAddr,
    stop: CancellationToken,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    /// [`Gateway::spawn`], then waits until `/readyz` answers 200.
    pub async fn start(brokers: &str, source_topic: &str, extra: &[&str]) -> Self {
        let gateway = Self::spawn(brokers, source_topic, extra);
        gateway.wait_ready().await;
        gateway
    }

    /// Parses the flags as the binary would (with the defaults the e2e tier passes) and
    /// starts the gateway on a free loopback port.
    pub fn spawn(brokers: &str, source_topic: &str, extra: &[&str]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let group = format!("gw-test-{}", addr.port());
        let mut args = vec![
            "cdc-gateway",
            "--brokers",
            brokers,
            "--source-topics",
            source_topic,
            "--listen",
            "127.0.0.1:0",
            "--stats-interval",
            "1s",
        ];
        if !extra.contains(&"--auto-offset-reset") {
            args.extend(["--auto-offset-reset", "earliest"]);
        }
        if !extra.contains(&"--group-id") {
            args.extend(["--group-id", &group]);
        }
        args.extend_from_slice(extra);
        let cli = Cli::try_parse_from(&args).expect("flags parse");
        cli.config.validate().expect("flags are valid");
        let core = Core::new(cli.config, Pages::ApiOnly).expect("configuration builds");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                core.run(listener, stopped.cancelled_owned()).await
            })
        });
        Gateway {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/readyz").await {
                return;
            }
            assert!(Instant::now() < deadline, "readyz never answered 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `TERM` and `INT` start the graceful shutdown, as the signals do for the binary.
    pub fn signal(&self, signal: &str) {
        assert!(
            matches!(signal, "TERM" | "INT"),
            "an in-process gateway takes TERM or INT, not {signal}"
        );
        self.stop.cancel();
    }

    /// Waits for `run` to return; `Some(0)` when it returned `Ok`, as the binary's exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let thread = self.thread.take().expect("running");
        let deadline = Instant::now() + within;
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "gateway did not stop within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        match thread.join() {
            Ok(Ok(())) => Some(0),
            Ok(Err(_)) => Some(1),
            Err(_) => None,
        }
    }
}

impl Endpoint for Gateway {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What most tests start from: a broker, a gateway reading a fresh topic (ready), a producer
/// and the topic's name.
pub type Stack = (MockBroker, Gateway, Producer, String);

/// A mock cluster with a new single-partition source topic, a gateway reading it (ready), and
/// a producer.
pub async fn start_stack(extra: &[&str]) -> Stack {
    let broker = MockBroker::start();
    let topic = unique("cdc-events");
    broker.create_topic(&topic, 1);
    let gateway = Gateway::start(&broker.brokers(), &topic, extra).await;
    let producer = broker.producer();
    (broker, gateway, producer, topic)
}
