//! The system under test: a Kafka-protocol broker and a gateway, either started here (tansu
//! with memory storage and the gateway binary, on free loopback ports, killed on drop) or
//! already running. Every address is checked to be loopback before anything is sent to it.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::host::Pid;

/// How long a started broker or gateway may take to come up.
const STARTUP: Duration = Duration::from_secs(60);

/// Where to find or how to start the broker and the gateway.
pub struct TargetSpec {
    pub brokers: Option<String>,
    pub gateway_url: Option<String>,
    pub gateway_pid: Option<u32>,
    pub tansu_bin: PathBuf,
    pub gateway_bin: PathBuf,
    pub gateway_args: Vec<String>,
    pub source_topic: String,
    pub partitions: i32,
    pub connections: u32,
    pub log_dir: PathBuf,
}

/// A broker and a gateway to run against.
pub struct Target {
    pub brokers: String,
    /// `ws://host:port/path` as clients request it.
    pub ws_url: String,
    /// The address clients connect to.
    pub ws_addr: SocketAddr,
    /// Process ids to read memory and CPU time from, when known.
    pub gateway: Option<u32>,
    pub tansu: Option<u32>,
    /// Partitions of the source topic (each gets a probe).
    pub partitions: i32,
    /// The gateway's full command line, when started here.
    pub gateway_command: Option<Vec<String>>,
    /// Processes started here, stopped in reverse order on drop.
    children: Vec<Started>,
}

struct Started {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Gets SIGTERM first and a moment to drain (the gateway), rather than SIGKILL at once.
    graceful: bool,
}

impl Target {
    /// Starts what is not given. Runs on the main thread: the children are tied to it with
    /// `PR_SET_PDEATHSIG`, so they die with the bench even if it is killed.
    pub async fn start(spec: TargetSpec) -> anyhow::Result<Self> {
        // Refuse a non-loopback gateway before anything is started or sent.
        let gateway_url = spec.gateway_url.as_deref().map(parse_ws_url).transpose()?;
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating --log-dir {}", spec.log_dir.display()))?;
        let mut target = Target {
            brokers: String::new(),
            ws_url: String::new(),
            ws_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            gateway: None,
            tansu: None,
            partitions: spec.partitions,
            gateway_command: None,
            children: Vec::new(),
        };
        target.brokers = match &spec.brokers {
            Some(brokers) => {
                for broker in brokers.split(',') {
                    loopback_addr(broker.trim(), None)
                        .with_context(|| format!("--brokers {brokers}"))?;
                }
                brokers.clone()
            }
            None => target.start_tansu(&spec)?,
        };
        target.partitions =
            crate::kafka::ensure_topic(&target.brokers, &spec.source_topic, spec.partitions)
                .await?;
        match gateway_url {
            Some((addr, url)) => {
                target.ws_addr = addr;
                target.ws_url = url;
                if let Some(pid) = spec.gateway_pid {
                    if !Pid::Of(pid).exists() {
                        bail!("--gateway-pid {pid}: no such process");
                    }
                    target.gateway = Some(pid);
                }
            }
            None => target.start_gateway(&spec).await?,
        }
        Ok(target)
    }

    fn start_tansu(&mut self, spec: &TargetSpec) -> anyhow::Result<String> {
        if !spec.tansu_bin.exists() {
            bail!(
                "tansu is not at {} (--tansu-bin): install it with scripts/install-tansu.sh, \
                 or pass --brokers",
                spec.tansu_bin.display()
            );
        }
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(&spec.tansu_bin);
        command.args([
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        self.spawn("tansu", command, spec, false)?;
        self.tansu = self.children.last().map(|c| c.child.id());
        let deadline = Instant::now() + STARTUP;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("tansu did not open port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(format!("127.0.0.1:{port}"))
    }

    async fn start_gateway(&mut self, spec: &TargetSpec) -> anyhow::Result<()> {
        if !spec.gateway_bin.exists() {
            bail!(
                "the gateway is not at {} (--gateway-bin): build it with `cargo build --bin \
                 cdc-gateway` (add --release for measurements), or pass --gateway-url",
                spec.gateway_bin.display()
            );
        }
        let port = free_port()?;
        let mut args: Vec<String> = [
            "--brokers",
            &self.brokers,
            "--source-topics",
            &spec.source_topic,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--auto-offset-reset",
            "latest",
        ]
        .map(str::to_owned)
        .into();
        let given = |flag: &str| {
            spec.gateway_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        // Defaults the user may override with --gateway-arg (clap refuses a flag twice).
        if !given("--group-id") {
            args.extend(["--group-id".into(), format!("cdc-gateway-bench-{port}")]);
        }
        if !given("--max-connections") {
            let max = (spec.connections + 64).max(10_000);
            args.extend(["--max-connections".into(), max.to_string()]);
        }
        if !given("--log-level") {
            args.extend(["--log-level".into(), "warn".into()]);
        }
        args.extend(spec.gateway_args.iter().cloned());
        let mut command = Command::new(&spec.gateway_bin);
        command.args(&args);
        self.spawn("gateway", command, spec, true)?;
        self.gateway = self.children.last().map(|c| c.child.id());
        self.gateway_command = Some(
            std::iter::once(spec.gateway_bin.display().to_string())
                .chain(args)
                .collect(),
        );
        self.ws_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.ws_url = format!("ws://127.0.0.1:{port}/ws");
        let deadline = Instant::now() + STARTUP;
        loop {
            self.check_alive()?;
            if readyz(self.ws_addr).await == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the gateway's /readyz did not answer 200 within {STARTUP:?}; log {}:\n{}",
                    self.children
                        .last()
                        .map_or(String::new(), |c| c.log.display().to_string()),
                    self.children
                        .last()
                        .map_or(String::new(), |c| log_tail(&c.log)),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        mut command: Command,
        spec: &TargetSpec,
        graceful: bool,
    ) -> anyhow::Result<()> {
        let log = spec
            .log_dir
            .join(format!("{name}-{}.log", std::process::id()));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            // A process group of its own: Ctrl-C reaches only the bench, which stops
            // producing, reports, and then stops the gateway and the broker in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().with_context(|| {
            format!(
                "starting {name} ({})",
                command.get_program().to_string_lossy()
            )
        })?;
        eprintln!("started {name} (pid {}), log {}", child.id(), log.display());
        self.children.push(Started {
            name,
            child,
            log,
            graceful,
        });
        Ok(())
    }

    /// Fails with the log tail of any started process that has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for started in &mut self.children {
            if let Ok(Some(status)) = started.child.try_wait() {
                bail!(
                    "{} exited ({status}); log {}:\n{}",
                    started.name,
                    started.log.display(),
                    log_tail(&started.log)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        while let Some(mut started) = self.children.pop() {
            if started.graceful {
                // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
                unsafe { libc::kill(started.child.id() as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = started.child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = started.child.kill();
            let _ = started.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("finding a free port")?
        .local_addr()?
        .port())
}

/// The address of `host:port`, refused unless it is loopback (127.0.0.0/8, ::1, localhost).
fn loopback_addr(host_port: &str, default_port: Option<u16>) -> anyhow::Result<SocketAddr> {
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').context("unclosed `[`")?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port.parse::<u16>().context("bad port")?)),
                None if after.is_empty() => (host, None),
                None => bail!("unexpected `{after}` after `]`"),
            }
        }
        None => match host_port.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => {
                (host, Some(port.parse::<u16>().context("bad port")?))
            }
            _ => (host_port, None),
        },
    };
    let port = port
        .or(default_port)
        .context("expected HOST:PORT (a port is missing)")?;
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>()
            .with_context(|| format!("`{host}` is not an IP address or localhost"))?
    };
    if !ip.is_loopback() {
        bail!("`{host}` is not a loopback address: the bench only targets 127.0.0.0/8 and ::1");
    }
    Ok(SocketAddr::new(ip, port))
}

/// Checks a `ws://` URL and returns the address to connect to and the URL to request.
fn parse_ws_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--gateway-url {url}: expected ws://HOST:PORT/PATH"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "ws"));
    let addr =
        loopback_addr(authority, Some(80)).with_context(|| format!("--gateway-url {url}"))?;
    Ok((addr, format!("ws://{authority}/{path}")))
}

/// The status of `GET /readyz`, or `None` when the gateway does not answer.
async fn readyz(addr: SocketAddr) -> Option<u16> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split(' ').nth(1)?.parse().ok()
    })
    .await
    .ok()
    .flatten()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_pass() {
        assert!(loopback_addr("127.0.0.1:9092", None).is_ok());
        assert!(loopback_addr("127.3.4.5:9092", None).is_ok());
        assert!(loopback_addr("localhost:9092", None).is_ok());
        assert!(loopback_addr("[::1]:9092", None).is_ok());
        assert!(loopback_addr("10.0.0.1:9092", None).is_err());
        assert!(loopback_addr("192.168.1.1:9092", None).is_err());
        assert!(loopback_addr("kafka.example.com:9092", None).is_err());
        assert!(loopback_addr("127.0.0.1", None).is_err());
        assert!(parse_ws_url("ws://127.0.0.1:8080/ws").is_ok());
        assert_eq!(
            parse_ws_url("ws://localhost:8080").unwrap().1,
            "ws://localhost:8080/ws"
        );
        assert!(parse_ws_url("wss://127.0.0.1:8080/ws").is_err());
        assert!(parse_ws_url("ws://8.8.8.8:80/ws").is_err());
    }
}
