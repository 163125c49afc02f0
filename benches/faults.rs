//! Frozen and slow endpoints under load (issue 12): what a frozen or slow pod costs users.
//!
//!     cargo bench --bench faults                 # every scenario, ~30 s each
//!     cargo bench --bench faults -- frozen slow  # some of them (names below)
//!     WEIR_FAULTS_FREEZE=10s cargo bench --bench faults -- frozen
//!
//! Eight `weir backend` processes (the `weir` built with this bench, or `$WEIR_BIN`): v1-0..3
//! and v2-0..3, v1 50 / v2 50, four static endpoints each, Weir's defaults for everything else,
//! Weir in this process. 32 clients for the whole run: 16 on one keep-alive connection each,
//! 16 opening a new connection per request (`Connection: close`); every 10th request of a
//! client is a POST with a unique `x-request-id`, and every backend records the ids it
//! received, so a request that reached two endpoints (or one twice) is counted.
//! Weir's admin API is scraped every 100 ms (`/metrics`, `GET /apps/web`).
//!
//! Scenarios (the faulty endpoint is always v2-0):
//! - `baseline`: no fault (what this machine's noise looks like).
//! - `frozen`: after the warm-up (3 s) v2-0 gets SIGSTOP for the freeze (20 s), then SIGCONT,
//!   then 5 s more. No probe.
//! - `frozen-probe`: the same with an HTTP probe on `/` (default interval, timeout, thresholds).
//! - `slow`: v2-0 answers every request after 3 s (`--delay 3s`), its siblings at once.
//! - `all-slow`: every v2 endpoint answers after 3 s, v1 at once: nothing should be ejected,
//!   retried or hedged.
//!
//! Knobs (humantime durations): `WEIR_FAULTS_WARMUP` (3s), `WEIR_FAULTS_FREEZE` (20s; also the
//! middle part of the runs without a freeze), `WEIR_FAULTS_AFTER` (5s), `WEIR_FAULTS_PAUSE`
//! (0s: closed loop; a pause between two requests of one client), `WEIR_FAULTS_CLIENTS` (32).
//!
//! Before issue 12's change (c7558d8 with this harness, fcc3fcc; 2-core VM, one run, release):
//!
//! ```text
//! scenario         GETs failed >250ms    >1s    >2s      p50      p99      max  POSTs   failed      max  twice last sent   ejected     back
//! baseline       438437      0      0      0      0      1ms      3ms     14ms  48698        0     12ms      0   +27.91s     never        -
//! frozen         415917      0     12     11     11      1ms      3ms   20.01s  46200        0     12ms      0   +19.14s     never     36ms
//! frozen-probe   423118      0      9      9      9      1ms      3ms   20.01s  46997        0   20.00s      0    +198ms     never    1.09s
//! slow           459725      0     79     79     79      1ms      2ms    3.03s  51064        0    3.00s      0   +26.83s     never        -
//! all-slow          591      0    292    292    292     49ms    3.04s    3.05s     49        0    3.00s      0   +27.14s     never        -
//! ```
//!
//! After issue 12's change (0c59c46, same machine, one run, release):
//!
//! ```text
//! scenario         GETs failed >250ms    >1s    >2s      p50      p99      max  POSTs   failed      max  twice last sent   ejected     back
//! baseline       389664      0      0      0      0      1ms      4ms     39ms  43279        0     38ms      0   +27.91s     never        -
//! frozen         384789      0     10      0      0      1ms      4ms    254ms  42739        0     11ms      0     +51ms    +353ms    never
//! frozen-probe   417909      0      9      0      0      1ms      4ms    254ms  46418        0     10ms      0    +196ms    +296ms    1.09s
//! slow           409454      0      7      0      0      1ms      4ms    254ms  45478        0    3.00s      0    +240ms    +341ms        -
//! all-slow          593      0    290    290    290     54ms    3.06s    3.06s     47        0    3.00s      0   +27.15s     never        -
//! ```
//!
//! After: out of traffic within 0.36 s in every fault, no GET over 300 ms, 0 failed; the all-slow
//! version is left alone (no counter moved). `back: never` for `frozen` is by design: the
//! ejection lasts `base_ejection` (30 s) and then a trial must succeed; the run ends 5 s after
//! SIGCONT. With a probe, the probe passing again sends the trial at once, which readmits it.
//!
//! Before — frozen: every request Weir sent the frozen endpoint (14, P2C steering away as they piled up
//! in flight) waited the whole freeze, as 20 s is under the 30 s request timeout; it was never
//! ejected and still got a new request 19.14 s into the freeze. With the probe it was down
//! after 6.10 s (`weir_endpoint_healthy` 0) but the 9 GETs and 1 POST already sent waited the
//! 20 s. Slow: 79 GETs and 8 POSTs took 3 s, until the end. All-slow (closed-loop clients, so
//! few requests): nothing failed, no counter moved.

#[path = "../tests/common/faults.rs"]
mod harness;

use std::time::Duration;

use harness::{
    BackendProc, Load, LoadOptions, Method, Stats, Timeline, Watch, backends, config, counter_deltas, duplicates, ms,
    quiesce, start_weir, stats, timeline,
};

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Freeze,
    /// v2-0, or every v2 endpoint, answers after this long.
    Slow(Duration, bool),
}

struct Scenario {
    name: &'static str,
    fault: Fault,
    probe: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "baseline", fault: Fault::None, probe: false },
    Scenario { name: "frozen", fault: Fault::Freeze, probe: false },
    Scenario { name: "frozen-probe", fault: Fault::Freeze, probe: true },
    Scenario { name: "slow", fault: Fault::Slow(Duration::from_secs(3), false), probe: false },
    Scenario { name: "all-slow", fault: Fault::Slow(Duration::from_secs(3), true), probe: false },
];

/// What one scenario measured, for the summary table.
struct Outcome {
    name: &'static str,
    frozen: bool,
    get: Stats,
    post: Stats,
    faulty: Timeline,
    post_dups: usize,
    counters: String,
}

fn env_duration(name: &str, default: &str) -> Duration {
    let text = std::env::var(name).unwrap_or_else(|_| default.into());
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{name}={text}: {e}"))
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is a scenario name.
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if let Some(unknown) = wanted.iter().find(|w| SCENARIOS.iter().all(|s| s.name != w.as_str())) {
        let names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        eprintln!("unknown scenario {unknown:?}; scenarios: {}", names.join(", "));
        std::process::exit(2);
    }
    let times = Times {
        warmup: env_duration("WEIR_FAULTS_WARMUP", "3s"),
        fault: env_duration("WEIR_FAULTS_FREEZE", "20s"),
        after: env_duration("WEIR_FAULTS_AFTER", "5s"),
    };
    let load = LoadOptions {
        clients: std::env::var("WEIR_FAULTS_CLIENTS").ok().and_then(|c| c.parse().ok()).unwrap_or(32),
        post_every: 10,
        pause: env_duration("WEIR_FAULTS_PAUSE", "0s"),
        // Above Weir's default request timeout (30 s): what clients see is Weir's doing.
        timeout: Duration::from_secs(40),
    };
    println!(
        "weir: {}; {} clients ({} keep-alive, {} new connection per request), every 10th request a POST, \
         pause {}; warm-up {}, fault {}, after {}",
        harness::weir_bin().display(),
        load.clients,
        load.clients / 2,
        load.clients - load.clients / 2,
        ms(load.pause),
        ms(times.warmup),
        ms(times.fault),
        ms(times.after),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut outcomes = Vec::new();
    for s in SCENARIOS.iter().filter(|s| wanted.is_empty() || wanted.iter().any(|w| w == s.name)) {
        outcomes.push(runtime.block_on(run(s, &times, &load)));
    }
    summary(&outcomes);
}

struct Times {
    warmup: Duration,
    fault: Duration,
    after: Duration,
}

async fn run(s: &Scenario, times: &Times, options: &LoadOptions) -> Outcome {
    let v2_delays = match s.fault {
        Fault::Slow(d, true) => vec![d; 4],
        Fault::Slow(d, false) => vec![d],
        _ => vec![],
    };
    let (v1, v2) = (backends("v1", 4, &[]), backends("v2", 4, &v2_delays));
    let probe = if s.probe { "probe = { path = \"/\" }" } else { "" };
    let weir = start_weir(&config(&v1, &v2, probe)).await;
    let load = Load::start(weir.listeners["main"], options);
    let watch = Watch::start(weir.admin, load.started, Duration::from_millis(100));
    let end = times.warmup + times.fault + times.after;
    // The window in which the faulty endpoint is judged: the freeze, or the whole run.
    let (from, to) = if s.fault == Fault::Freeze {
        load.until(times.warmup).await;
        // Exact counts at both ends of the freeze: scraped right before SIGSTOP and SIGCONT.
        watch.scrape_now(weir.admin).await;
        v2[0].freeze();
        let frozen = load.elapsed();
        load.until(frozen + times.fault).await;
        watch.scrape_now(weir.admin).await;
        let thawed = load.elapsed();
        v2[0].thaw();
        load.until(thawed + times.after).await;
        (frozen, thawed)
    } else {
        load.until(end).await;
        (Duration::ZERO, end)
    };
    let samples = load.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let scrapes = watch.stop().await;
    let final_view = scrapes.last().and_then(|s| s.endpoints.get("v2-0").cloned()).unwrap_or_default();
    weir.shutdown().await;

    let all: Vec<&BackendProc> = v1.iter().chain(&v2).collect();
    quiesce(&all).await;
    let mut received = Vec::new();
    for b in &all {
        received.push((b.name.clone(), b.ids().await));
    }
    let dups = duplicates(&received);
    let post_dups = dups.keys().filter(|id| id.starts_with("POST-")).count();
    let sent_at: std::collections::HashMap<&str, Duration> = samples.iter().map(|x| (x.id.as_str(), x.at)).collect();
    let posts_to_faulty = received[4]
        .1
        .iter()
        .filter(|id| id.starts_with("POST-") && sent_at.get(id.as_str()).is_some_and(|at| (from..to).contains(at)))
        .count();

    let get = stats(samples.iter().filter(|x| x.method == Method::Get));
    let post = stats(samples.iter().filter(|x| x.method == Method::Post));
    let faulty = timeline(&scrapes, "v2-0", from, to);
    let on_faulty =
        stats(samples.iter().filter(|x| x.served_by.as_deref() == Some("v2-0") && (from..to).contains(&x.at)));
    let deltas = counter_deltas(&scrapes, &["retr", "hedg", "eject", "upstream_errors", "spillover"]);
    let counters: Vec<String> = deltas.iter().filter(|(_, v)| **v != 0.0).map(|(k, v)| format!("{k} +{v}")).collect();
    let counters = if counters.is_empty() { "none moved".to_string() } else { counters.join(", ") };

    let what = match s.fault {
        Fault::None => "no fault".to_string(),
        Fault::Freeze => format!(
            "v2-0 frozen (SIGSTOP) at +{} for {}, then SIGCONT, {} more; {}",
            ms(from),
            ms(to - from),
            ms(times.after),
            if s.probe { "probe GET / (interval 1s, timeout 1s, 3 fails down, 2 passes up)" } else { "no probe" }
        ),
        Fault::Slow(d, false) => format!("v2-0 answers after {}, its siblings at once; {} run", ms(d), ms(end)),
        Fault::Slow(d, true) => format!("every v2 endpoint answers after {}, v1 at once; {} run", ms(d), ms(end)),
    };
    println!("\n== {}: {what}", s.name);
    print_stats("GET ", &get);
    print_stats("POST", &post);
    let window = if s.fault == Fault::Freeze { "during the freeze" } else { "during the run" };
    println!(
        "  v2-0   Weir sent it {} requests {window}: {} after +1s, {} in the last 3s; last new request by +{}",
        faulty.sent,
        faulty.sent_after_1s,
        faulty.sent_last_3s,
        faulty.last_new.map_or("- (none)".into(), ms),
    );
    println!(
        "         weir_endpoint_healthy 0 at {}; \"ejected\": true at {}; {}",
        faulty.unhealthy.map_or("never".into(), |d| format!("+{}", ms(d))),
        faulty.ejected.map_or("never".into(), |d| format!("+{}", ms(d))),
        if s.fault == Fault::Freeze {
            format!("new requests again {} after SIGCONT", faulty.back.map_or("never (in the scrapes)".into(), ms))
        } else {
            String::new()
        },
    );
    println!(
        "         at the end: healthy {}, ejected {}, times ejected {}, last change: {}",
        final_view.healthy,
        final_view.ejected,
        final_view.times_ejected,
        final_view.last_change.as_deref().unwrap_or("-"),
    );
    println!(
        "         answered {} requests sent {window} (max {}); {posts_to_faulty} POSTs sent {window} reached it",
        on_faulty.n,
        ms(on_faulty.max),
    );
    println!(
        "  sent twice: {post_dups} POSTs, {} GETs (ids received by two endpoints, or one twice)",
        dups.len() - post_dups
    );
    println!("  counters (change over the run): {counters}");
    Outcome { name: s.name, frozen: s.fault == Fault::Freeze, get, post, faulty, post_dups, counters }
}

fn print_stats(label: &str, s: &Stats) {
    println!(
        "  {label}   {} requests, {} failed{}; over 250ms {}, over 1s {}, over 2s {}; p50 {} p99 {} max {}",
        s.n,
        s.failed,
        if s.failures.is_empty() { String::new() } else { format!(" {:?}", s.failures) },
        s.over_250ms,
        s.over_1s,
        s.over_2s,
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
    );
}

fn summary(outcomes: &[Outcome]) {
    println!(
        "\n{:<13} {:>7} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>6} {:>9} {:>9} {:>8}",
        "scenario",
        "GETs",
        "failed",
        ">250ms",
        ">1s",
        ">2s",
        "p50",
        "p99",
        "max",
        "POSTs",
        "failed",
        "max",
        "twice",
        "last sent",
        "ejected",
        "back",
    );
    for o in outcomes {
        println!(
            "{:<13} {:>7} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>6} {:>9} {:>9} {:>8}",
            o.name,
            o.get.n,
            o.get.failed,
            o.get.over_250ms,
            o.get.over_1s,
            o.get.over_2s,
            ms(o.get.p50),
            ms(o.get.p99),
            ms(o.get.max),
            o.post.n,
            o.post.failed,
            ms(o.post.max),
            o.post_dups,
            o.faulty.last_new.map_or("-".into(), |d| format!("+{}", ms(d))),
            o.faulty.ejected.map_or("never".into(), |d| format!("+{}", ms(d))),
            if o.frozen { o.faulty.back.map_or("never".into(), ms) } else { "-".into() },
        );
    }
    println!(
        "(GET/POST: what clients saw; over 250ms/1s/2s: requests that took longer; twice: POST ids \
         received by two endpoints; last sent / ejected: since the fault began (freeze) or the run \
         began (slow), for v2-0, from Weir's metrics and admin API scraped every 100 ms; back: first \
         new request after SIGCONT)"
    );
    for o in outcomes {
        println!("{:<13} counters: {}", o.name, o.counters);
    }
}
