//! What the bench reads from and asks of the local machine: a process's memory and CPU time
//! from `/proc`, the descriptor limit N connections need, and how many loopback source
//! addresses spread them over so the ephemeral port range does not run out.

use std::net::{IpAddr, Ipv4Addr};

/// A process to measure: its id, or the bench itself.
#[derive(Debug, Clone, Copy)]
pub enum Pid {
    Of(u32),
    Me,
}

impl Pid {
    fn path(self, file: &str) -> String {
        match self {
            Pid::Of(pid) => format!("/proc/{pid}/{file}"),
            Pid::Me => format!("/proc/self/{file}"),
        }
    }

    pub fn exists(self) -> bool {
        std::path::Path::new(&self.path("stat")).exists()
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes: `VmHWM` (peak RSS), `VmRSS`.
    pub fn status_bytes(self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(self.path("status")).ok()?;
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        })
    }

    /// User plus system CPU time so far, in seconds (`utime + stime` of `/proc/<pid>/stat`).
    pub fn cpu_seconds(self) -> Option<f64> {
        let stat = std::fs::read_to_string(self.path("stat")).ok()?;
        // The command name may hold spaces and parentheses: fields are counted after its `)`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Field 3 (state) is fields[0], so utime (14) and stime (15) are 11 and 12.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
    }
}

/// Raises this process's open-file limit (inherited by the tansu and gateway it starts) to
/// `needed`, as far as the hard limit allows; says so on stderr when that is not enough.
pub fn raise_nofile(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        eprintln!("warning: cannot read RLIMIT_NOFILE; {needed} descriptors may not be available");
        return;
    }
    if limit.rlim_cur >= needed {
        return;
    }
    // Raising the hard limit needs privileges; try, then settle for the hard limit.
    let wanted = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max.max(needed),
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return;
    }
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } == 0;
    let now = if raised {
        limit.rlim_max
    } else {
        limit.rlim_cur
    };
    eprintln!(
        "warning: RLIMIT_NOFILE is {now} (hard limit {}), but these connections need about \
         {needed} descriptors in the bench and as many in the gateway: expect failed \
         connections (run as a user allowed more, e.g. `ulimit -Hn {needed}`)",
        limit.rlim_max
    );
}

/// Ephemeral ports available per (source address, destination) pair.
fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut bounds = range.split_whitespace().map(str::parse::<u64>);
            let low = bounds.next()?.ok()?;
            let high = bounds.next()?.ok()?;
            Some(high.saturating_sub(low) + 1)
        })
        .unwrap_or(28_232)
}

/// The loopback source addresses to spread `connections` over, or `None` when the kernel's
/// choice is enough. Connections bound to 127.0.0.2, 127.0.0.3, ... each get their own
/// ephemeral port range, which 50,000 connections to one port would otherwise exhaust.
pub fn source_addresses(connections: u32, target: IpAddr) -> Option<Vec<IpAddr>> {
    let per_address = ephemeral_ports() * 9 / 10;
    let needed = u64::from(connections).div_ceil(per_address.max(1));
    if needed <= 1 {
        return None;
    }
    if !target.is_ipv4() {
        eprintln!(
            "warning: {connections} connections to an IPv6 target share one source address \
             and {per_address} ephemeral ports: use a 127.0.0.1 target for more"
        );
        return None;
    }
    Some(
        (0..needed)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect(),
    )
}

/// Number of CPUs the bench sees (`nproc`).
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
