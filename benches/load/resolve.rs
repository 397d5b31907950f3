//! Names resolved at run time: what looking up 100 names every second costs the workers, and
//! how soon an address change reaches the traffic.

use super::*;
use harness::{Admin, Dnsmasq};

/// Seconds of user and system CPU a process has used (`/proc/PID/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = fields.get(11..13).map_or(0.0, |times| {
        times.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    // The clock tick (USER_HZ) is 100 on Linux.
    ticks / 100.0
}

pub(crate) fn resolve_cost(settings: &Settings) {
    let names = 100;
    let records: Vec<(String, String)> = (0..names)
        .map(|index| ("127.0.0.1".to_string(), format!("name{index}")))
        .collect();
    let records: Vec<(&str, &str)> = records
        .iter()
        .map(|(a, n)| (a.as_str(), n.as_str()))
        .collect();
    let dns = Dnsmasq::start(&records);
    let backend = Backend::start("backend");
    let lines: String = (0..names)
        .map(|index| format!("shift_resolve name{index}:{};", backend.port()))
        .collect::<Vec<_>>()
        .join(" ");
    let port = free_port();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "resolver 127.0.0.1:{} valid=1s ipv6=off; resolver_timeout 1s;\n\
         upstream app {{ {lines} shift; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}",
        dns.port()
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    // All names answer the same address: one peer, found by the first lookup.
    let found = wait_until(Duration::from_secs(10), || {
        !admin.upstream("app").peers.is_empty()
    });
    assert!(found.is_some(), "the names resolved");
    let workers = nginx.worker_pids();
    let seconds = if settings.full { 30 } else { 3 };
    let before: f64 = workers.iter().map(|&pid| cpu_seconds(pid)).sum();
    let start = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let used: f64 = workers.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>() - before;
    let share = used / start.elapsed().as_secs_f64() * 100.0;
    println!("## Names resolved at run time\n");
    println!(
        "CPU the workers use while an upstream's {names} names (`shift_resolve`) are looked up \
         every second (`resolver valid=1s`), with no traffic, over {seconds} s \
         (`/proc/PID/stat`, 10 ms ticks).\n"
    );
    println!("| names | lookups per second | workers' CPU |");
    println!("| ---: | ---: | ---: |");
    println!("| {names} | {names} | {share:.2}% of one core |");
    println!();
}
