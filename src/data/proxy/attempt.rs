//! One request's attempts, the same for every path: each attempt is counted and holds the
//! endpoint's in-flight count; after a failure [`Attempts::after_failure`] decides whether
//! the request goes again (same endpoint after a stale connection, another endpoint, or
//! nowhere). Paths differ only in how one attempt is sent ([`Exchange`]): hyper's client for
//! the general path, Weir's codec for the fast path.

use std::future::Future;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};

use super::{ProxyError, ResponseBody, error_response};
use crate::config::HedgeAfter;
use crate::data::outlier;
use crate::data::pool::{Endpoint, InFlight};
use crate::data::snapshot::{App, Version};
use crate::data::upstream::UpstreamError;
use crate::metrics::UpstreamErrorKind;

/// How one attempt of a request is sent on a path.
pub(super) trait Exchange: Sized {
    /// What an attempt that got a response head yields.
    type Answer;
    /// Sends the request to `endpoint` once and reads the response head. `last`: no attempt
    /// will follow (a body that cannot be sent twice may go now). The request timeout is
    /// the caller's ([`drive`]): one timer per attempt serves it and the hedge delay.
    fn send<'s>(
        &'s mut self,
        endpoint: &'s Endpoint,
        last: bool,
    ) -> impl Future<Output = Result<Self::Answer, UpstreamError>> + Send + 's;
    /// The status of an answer, as counted.
    fn status(answer: &Self::Answer) -> StatusCode;
    /// A second exchange of the same request, to hedge with: called only for requests that
    /// can be sent more than once, before the first attempt starts.
    fn spare(&self) -> Self;
    /// Whether the client has not finished sending the request's body: a timeout then is
    /// the client's doing (a slow upload), not the endpoint's.
    fn client_sending(&self) -> bool {
        false
    }
}

/// An attempt that got a response head: the answer, the endpoint that gave it, and its
/// in-flight count, held until the body is through. `spare`: the hedge's exchange, when the
/// answer came from the hedge (what it read is in there).
pub(super) struct Sent<'a, T, X> {
    pub answer: T,
    pub endpoint: &'a Endpoint,
    pub in_flight: InFlight,
    pub spare: Option<X>,
}

/// Runs the attempts of one request on `exchange`, starting at `endpoint`. An idempotent
/// request still waiting for its response head after the hedge delay is also sent to a
/// second endpoint ([`race`]). `Err`: the response to give instead (the last failure's,
/// counted).
pub(super) async fn drive<'a, X: Exchange>(
    app: &'a App,
    mut version: &'a Version,
    mut endpoint: &'a Endpoint,
    mut attempts: Attempts,
    exchange: &mut X,
    start: Instant,
) -> Result<Sent<'a, X::Answer, X>, Response<ResponseBody>> {
    let mut tried = start;
    loop {
        endpoint.requests.inc();
        let in_flight = InFlight::start(&endpoint.state);
        let raced = match attempts.hedge_delay(app, version) {
            Some(delay) => race(app, version, endpoint, &mut attempts, exchange, delay).await,
            None => match endpoint.client.within_request_timeout(exchange.send(endpoint, attempts.left == 0)).await {
                Ok(answer) => Raced::First(answer),
                Err(e) => Raced::Failed(e, version, endpoint),
            },
        };
        match raced {
            Raced::First(answer) => {
                answered(app, version, endpoint, X::status(&answer), start, tried);
                return Ok(Sent { answer, endpoint, in_flight, spare: None });
            }
            Raced::Hedge(answer, hedge) => {
                // Answered by the second endpoint though the first had a head start: the
                // first is slow or frozen, which counts against it.
                version.metrics.hedges[1].inc();
                tracing::debug!(
                    app = %app.name, version = %version.name, slow = %endpoint.name, hedge = %hedge.endpoint.name,
                    "the hedge answered first"
                );
                outlier::on_failure(app, version, endpoint);
                drop(in_flight);
                answered(app, hedge.version, hedge.endpoint, X::status(&answer), start, hedge.sent);
                return Ok(Sent {
                    answer,
                    endpoint: hedge.endpoint,
                    in_flight: hedge.in_flight,
                    spare: Some(hedge.spare),
                });
            }
            Raced::Failed(mut e, in_version, failed) => {
                drop(in_flight);
                version = in_version;
                if e.kind == UpstreamErrorKind::Timeout && exchange.client_sending() {
                    // The upstream waited for the rest of the body: not held against it.
                    e = UpstreamError::new(
                        UpstreamErrorKind::Client,
                        "request body: not all received within the request timeout",
                    );
                }
                match attempts.after_failure(app, version, failed, &e) {
                    Some(next) => {
                        endpoint = next;
                        tried = Instant::now();
                    }
                    None => return Err(self::failed(version, e, start)),
                }
            }
        }
    }
}

/// Why a request due for a hedge got none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoHedge {
    /// No other healthy endpoint in its version.
    NoOther,
    /// The retry budget is spent.
    NoBudget,
}

/// When a hedge goes out.
enum HedgeDelay {
    /// This long after the attempt started.
    After(Duration),
    /// `auto`, and no endpoint of the version has answered yet: once one has.
    NotYetKnown,
}

/// How a (possibly hedged) attempt ended.
enum Raced<'a, A, X> {
    /// The first attempt answered (a hedge, if any, was cancelled).
    First(A),
    /// The hedge answered first (the first attempt was cancelled).
    Hedge(A, Hedge<'a, X>),
    /// The last attempt still running failed, on this endpoint of this version; an earlier
    /// failure of the other one was counted already.
    Failed(UpstreamError, &'a Version, &'a Endpoint),
}

/// A hedge that answered.
struct Hedge<'a, X> {
    /// The request's version, or the one it spilled to.
    version: &'a Version,
    endpoint: &'a Endpoint,
    in_flight: InFlight,
    sent: Instant,
    spare: X,
}

/// Sends the request to `endpoint` and, if no response head came within `delay`, to a second
/// endpoint as well (when the version has one and the retry budget allows): the first answer
/// wins, the other attempt is dropped, which closes its connection. A failure of one while
/// the other runs is counted and the other awaited.
async fn race<'a, X: Exchange>(
    app: &'a App,
    version: &'a Version,
    endpoint: &'a Endpoint,
    attempts: &mut Attempts,
    exchange: &mut X,
    delay: HedgeDelay,
) -> Raced<'a, X::Answer, X> {
    let mut spare = exchange.spare();
    let started = tokio::time::Instant::now();
    let give_up = started + endpoint.client.timeouts.request;
    let first = exchange.send(endpoint, false);
    tokio::pin!(first);
    // One timer: the hedge delay, then the first attempt's request timeout.
    let (mut known, mut at) = match delay {
        HedgeDelay::After(d) => (true, started + d),
        HedgeDelay::NotYetKnown => (false, started + HedgeAfter::AUTO_MIN),
    };
    let timer = tokio::time::sleep_until(at.min(give_up));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            r = &mut first => return match r {
                Ok(answer) => Raced::First(answer),
                Err(e) => Raced::Failed(e, version, endpoint),
            },
            () = &mut timer => {}
        }
        let now = tokio::time::Instant::now();
        if now >= give_up {
            return Raced::Failed(endpoint.client.timed_out(), version, endpoint);
        }
        if known {
            break;
        }
        // Sent before the version's latency was known (a cold start): as soon as it is, the
        // request is hedged on that delay from when it was sent, as a later one would be.
        match app.retry.hedge_after.delay(version.pool.typical_latency()) {
            Some(d) if started + d <= now => break,
            Some(d) => (known, at) = (true, started + d),
            None => at = now + HedgeAfter::AUTO_MIN,
        }
        timer.as_mut().reset(at.min(give_up));
    }
    timer.as_mut().reset(give_up);
    let first = async {
        tokio::select! {
            biased;
            r = &mut first => r,
            () = &mut timer => Err(endpoint.client.timed_out()),
        }
    };
    tokio::pin!(first);
    let (other_version, other) = match attempts.hedge(app, version, endpoint) {
        Ok(other) => (version, other),
        Err(why) => {
            let spilled = (why == NoHedge::NoOther).then(|| {
                // Overdue past the version's hedge deadline with no sibling to overtake it
                // (the version's only endpoint, or the only one left): counted as a lost
                // hedge would be, so a frozen one is ejected after a few; and the request
                // goes where the version's share spills when it is down, as a hedge.
                tracing::debug!(
                    app = %app.name, version = %version.name, endpoint = %endpoint.name,
                    "overdue, and no other endpoint in its version to hedge to"
                );
                outlier::on_failure(app, version, endpoint);
                attempts.spill_hedge(app, version)
            });
            match spilled.flatten() {
                Some(picked) => picked,
                None => {
                    return match first.await {
                        Ok(answer) => Raced::First(answer),
                        Err(e) => Raced::Failed(e, version, endpoint),
                    };
                }
            }
        }
    };
    other.requests.inc();
    let in_flight = InFlight::start(&other.state);
    let sent = Instant::now();
    // Which side answered or failed last; the hedge's future borrows `spare`, so the outcome
    // is taken out of this block before `spare` can be handed on.
    enum Won<A> {
        First(A),
        Second(A),
        Failed(UpstreamError, bool),
    }
    let won = {
        let second = other.client.within_request_timeout(spare.send(other, false));
        tokio::pin!(second);
        tokio::select! {
            r = &mut first => match r {
                Ok(answer) => Won::First(answer),
                Err(e) => {
                    attempts.count_failure(app, version, endpoint, &e);
                    match second.await {
                        Ok(answer) => Won::Second(answer),
                        Err(e) => Won::Failed(e, true),
                    }
                }
            },
            r = &mut second => match r {
                Ok(answer) => Won::Second(answer),
                Err(e) => {
                    attempts.count_failure(app, other_version, other, &e);
                    match first.await {
                        Ok(answer) => Won::First(answer),
                        Err(e) => Won::Failed(e, false),
                    }
                }
            },
        }
    };
    match won {
        Won::First(answer) => Raced::First(answer),
        Won::Second(answer) => {
            Raced::Hedge(answer, Hedge { version: other_version, endpoint: other, in_flight, sent, spare })
        }
        Won::Failed(e, true) => Raced::Failed(e, other_version, other),
        Won::Failed(e, false) => Raced::Failed(e, version, endpoint),
    }
}

/// Counts a response whose head came from `endpoint`, `tried` after the attempt started: its
/// status, the time to it, its latency for the endpoint's average, and a 5xx against the
/// endpoint where the app counts those.
pub(super) fn answered(
    app: &App,
    version: &Version,
    endpoint: &Endpoint,
    status: StatusCode,
    start: Instant,
    tried: Instant,
) {
    if status.is_server_error() && app.outlier.count_5xx {
        outlier::on_failure(app, version, endpoint);
    } else {
        endpoint.state.record_success(tried.elapsed());
    }
    version.metrics.record(status, Some(start.elapsed()));
}

/// The response to a request whose last attempt failed with `e`, counted.
pub(super) fn failed(version: &Version, e: UpstreamError, start: Instant) -> Response<ResponseBody> {
    let resp = error_response(&ProxyError::Upstream(e));
    version.metrics.record(resp.status(), Some(start.elapsed()));
    resp
}

/// The retries one request has left, and what decides them.
pub(super) struct Attempts {
    /// Further attempts allowed (0 for a request whose body cannot be sent again).
    pub(super) left: u32,
    idempotent: bool,
    /// Whether the one retry after a stale connection was used.
    stale_retried: bool,
    /// Whether the request was hedged (once at most).
    hedged: bool,
    /// Whether a hedge may go to another version (where its version's share spills), when
    /// its own has no other endpoint: not for a request forced into its version.
    may_spill: bool,
}

impl Attempts {
    pub(super) fn new(app: &App, replayable: bool, idempotent: bool) -> Self {
        Attempts {
            left: if replayable { app.retry.attempts } else { 0 },
            idempotent,
            stale_retried: false,
            hedged: false,
            may_spill: false,
        }
    }

    /// Lets a hedge go to another version when the request's own has no other endpoint
    /// (`may`: the request was not forced into its version).
    pub(super) fn spilling(mut self, may: bool) -> Self {
        self.may_spill = may;
        self
    }

    /// A hedge to another version, for a request overdue in a version with no other healthy
    /// endpoint: where the version's share would spill were it down (the app's
    /// `on_version_down = "spill"`), taking an attempt and a retry from the budget.
    fn spill_hedge<'a>(&mut self, app: &'a App, version: &'a Version) -> Option<(&'a Version, &'a Endpoint)> {
        if !self.may_spill || !app.spill {
            return None;
        }
        let index = app.versions.iter().position(|v| std::ptr::eq(v, version))?;
        let to = &app.versions[app.spill_from(index)?];
        let endpoint = to.pool.pick()?;
        self.take_hedge(app, version).then(|| {
            version.metrics.spilled.inc();
            (to, endpoint)
        })
    }

    /// Takes an attempt and a retry from the budget for a hedge of a request in `version`,
    /// counted there; `false` when the budget is spent.
    fn take_hedge(&mut self, app: &App, version: &Version) -> bool {
        if !app.upstream.budget.try_retry(app.retry.budget_percent, app.retry.budget_min) {
            return false;
        }
        self.left -= 1;
        version.metrics.hedges[0].inc();
        true
    }

    /// How long the next attempt waits for its response head before a hedge goes out, if
    /// it may be hedged: an idempotent request that can be sent again, not hedged yet, with
    /// a delay shorter than the request timeout.
    fn hedge_delay(&self, app: &App, version: &Version) -> Option<HedgeDelay> {
        if self.hedged || self.left == 0 || !self.idempotent {
            return None;
        }
        let typical = version.pool.typical_latency();
        let Some(delay) = app.retry.hedge_after.delay(typical) else {
            return (app.retry.hedge_after == HedgeAfter::Auto).then_some(HedgeDelay::NotYetKnown);
        };
        let timeout = version.pool.endpoints().first()?.client.timeouts.request;
        (delay < timeout).then_some(HedgeDelay::After(delay))
    }

    /// The endpoint a hedge goes to, taking an attempt and a retry from the budget, or why
    /// there is none.
    fn hedge<'a>(
        &mut self,
        app: &'a App,
        version: &'a Version,
        endpoint: &'a Endpoint,
    ) -> Result<&'a Endpoint, NoHedge> {
        self.hedged = true;
        let other = version.pool.pick_other(endpoint.addr).ok_or(NoHedge::NoOther)?;
        if !self.take_hedge(app, version) {
            return Err(NoHedge::NoBudget);
        }
        Ok(other)
    }

    /// Counts the failure of one side of a hedged request while the other still runs.
    fn count_failure(&self, app: &App, version: &Version, endpoint: &Endpoint, e: &UpstreamError) {
        version.metrics.count_error(e.kind);
        tracing::debug!(app = %app.name, endpoint = %endpoint.name, kind = e.kind.as_str(), "hedged attempt failed: {}", e.message);
        if e.kind != UpstreamErrorKind::Client {
            outlier::on_failure(app, version, endpoint);
        }
    }

    /// Counts an attempt's failure on `endpoint` and picks where the request goes next: the
    /// same endpoint, another one, or nowhere (`None`: answer with the error).
    fn after_failure<'a>(
        &mut self,
        app: &'a App,
        version: &'a Version,
        endpoint: &'a Endpoint,
        e: &UpstreamError,
    ) -> Option<&'a Endpoint> {
        // A kept-alive connection closed under the request by the upstream: the same
        // endpoint gets it again, once, on a fresh connection. Only requests safe to repeat,
        // as the upstream may have read it.
        if e.stale && self.idempotent && self.left > 0 && !self.stale_retried {
            tracing::debug!(app = %app.name, endpoint = %endpoint.name, "stale upstream connection: {}", e.message);
            self.stale_retried = true;
            return Some(endpoint);
        }
        version.metrics.count_error(e.kind);
        if e.kind == UpstreamErrorKind::Client {
            tracing::info!(app = %app.name, endpoint = %endpoint.name, "{}", e.message);
            return None;
        }
        outlier::on_failure(app, version, endpoint);
        // Nothing reached the upstream after a connect error; after a reset it may have, so
        // only idempotent requests go again.
        let safe = match e.kind {
            UpstreamErrorKind::Connect => true,
            UpstreamErrorKind::Protocol => self.idempotent,
            UpstreamErrorKind::Timeout | UpstreamErrorKind::NoEndpoint | UpstreamErrorKind::Client => false,
        };
        let next = (self.left > 0 && safe)
            .then(|| version.pool.pick_other(endpoint.addr))
            .flatten()
            .filter(|_| app.upstream.budget.try_retry(app.retry.budget_percent, app.retry.budget_min));
        match next {
            Some(next) => {
                tracing::debug!(
                    app = %app.name, version = %version.name, from = %endpoint.name, to = %next.name,
                    kind = e.kind.as_str(), "retrying on another endpoint: {}", e.message
                );
                version.metrics.retries.inc();
                self.left -= 1;
                Some(next)
            }
            None => {
                tracing::warn!(
                    app = %app.name, version = %version.name, endpoint = %endpoint.name,
                    kind = e.kind.as_str(), "upstream error: {}", e.message
                );
                None
            }
        }
    }
}
