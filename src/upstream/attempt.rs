//! The attempts of one request: pick an endpoint → send → record the outcome → retry or hedge.
//!
//! This is where the policies meet: the plan and balancers choose (never an endpoint this request
//! already tried while another is available), `forward` sends, each finished attempt feeds the
//! endpoint's stats and outlier record, `retry` judges a failure, `limits` admits a retry or a
//! hedge within the budget. Building the request and shaping the response are the handler's.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{StatusCode, request::Parts};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use super::{
    cluster::{Cluster, Endpoint},
    forward::{self, Failed, Sent, UpstreamBody},
    limits::Permit,
    replay::Replay,
    retry::{self, Failure, Hedge, RetryPolicy},
    stats::InFlight,
};
use crate::{
    body::ProxyBody,
    error::{ProxyError, Side},
    health::outlier::Outcome,
};

/// The request body across attempts: nothing, a body every attempt can read from the start (see
/// `replay`), or the client's stream, which only one attempt can read (unless it comes back
/// unsent).
pub enum Payload {
    Empty,
    Replay(Replay),
    /// Boxed: rare (a body too large to replay, or retries off) and large.
    Stream(Option<Box<ProxyBody>>),
}

impl Payload {
    fn for_attempt(&mut self) -> ProxyBody {
        match self {
            Self::Empty => ProxyBody::empty(),
            Self::Replay(r) => ProxyBody::boxed(r.reader()),
            Self::Stream(s) => s.take().map_or_else(ProxyBody::empty, |b| *b),
        }
    }

    /// Whether another attempt could send the body again.
    fn replayable(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Replay(r) => r.replayable(),
            Self::Stream(_) => false,
        }
    }
}

/// What the attempts need to know about the request.
pub struct Plan<'a> {
    pub cluster: &'a Cluster,
    pub parts: &'a Parts,
    pub hash: Option<u64>,
    pub policy: &'a RetryPolicy,
    pub hedge: Option<&'a Hedge>,
    pub idempotent: bool,
    /// The route's deadline: all attempts together must have a response head by then.
    pub deadline: tokio::time::Instant,
}

/// The attempt whose response goes to the client.
pub struct Answer {
    pub sent: Sent,
    /// The endpoint that answered (a hedge's may differ from the last one `on_attempt` heard of).
    pub endpoint: Arc<Endpoint>,
    /// The endpoint's in-flight count, held until the response ends.
    pub in_flight: InFlight,
    /// The retry or hedge slot, when one was used, held as long.
    pub retry: Option<Permit>,
    /// How long the winning attempt took to its response head.
    pub upstream_time: Duration,
    /// Attempts made, hedges included.
    pub attempts: u32,
    /// The answer's outcome, to count against its endpoint when the response ends
    /// (`Verdict::finish`); `None` when there is nothing to count.
    pub verdict: Option<(Outcome, Duration)>,
}

impl Answer {
    /// The verdict to finish when the response ends.
    pub fn verdict(&self, cluster: &Arc<Cluster>) -> Option<Verdict> {
        self.verdict.map(|(outcome, rtt)| Verdict {
            cluster: Arc::clone(cluster),
            endpoint: Arc::clone(&self.endpoint),
            outcome,
            rtt,
        })
    }
}

/// One finished attempt.
struct Tried {
    result: Result<Sent, Failed>,
    endpoint: Arc<Endpoint>,
    idx: usize,
    in_flight: InFlight,
    rtt: Duration,
    /// What it says about the endpoint, for outlier detection; `None` when nothing (the
    /// client's fault). Counted once: when the attempt is given up for a retry, or, for the
    /// answer the client gets, when its body ends (`Verdict`), since a response can still fail
    /// mid-body.
    outcome: Option<(Outcome, Instant)>,
}

impl Tried {
    /// Counts the outcome against the endpoint now, once: a judged attempt that is later answered
    /// to the client (a retry the budget refused) is not counted again.
    fn judge(&mut self, cluster: &Cluster) {
        if let Some((outcome, at)) = self.outcome.take() {
            judge(cluster, &self.endpoint, outcome, self.rtt, at);
        }
    }
}

/// The outcome of the attempt whose response the client gets, counted when the response ends.
pub struct Verdict {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
    outcome: Outcome,
    rtt: Duration,
}

impl Verdict {
    /// Counts the outcome, or a local failure when the upstream's body failed part-way (a reset
    /// or a stall: `failure` is the body's access-log flag). A client that went away says nothing
    /// about the endpoint, so its responses count as they began.
    pub fn finish(self, failure: Option<&str>) {
        let outcome = match failure {
            Some("UR" | "SI") => Outcome::LocalFailure,
            _ => self.outcome,
        };
        judge(
            &self.cluster,
            &self.endpoint,
            outcome,
            self.rtt,
            Instant::now(),
        );
    }
}

/// Runs attempts until one answers well, or no further attempt is allowed. `sent_at` is the
/// caller's clock reading for the first; `on_attempt` hears of each endpoint tried (for the
/// access log, which must name the upstream even if the client leaves mid-attempt).
///
/// A retry to another endpoint goes at once: the backoff (and a `Retry-After`) is for coming back
/// to the same one, when no other is left (HAProxy waits only before retrying the same server,
/// too). The retry budget is asked right before the retry is sent, so waiting retries never hold
/// budget, and when it says no, the client gets the last attempt's answer.
pub async fn run(
    plan: &Plan<'_>,
    payload: &mut Payload,
    mut sent_at: Instant,
    mut on_attempt: impl FnMut(&Endpoint, u32),
) -> Result<Answer, ProxyError> {
    let (cluster, policy) = (plan.cluster, plan.policy);
    let mut tried = [0usize; 10];
    let mut n_tried = 0;
    let mut attempt = 1u32;
    let mut retry_permit = None;
    let mut retried = false;
    // The last failed attempt, and the wait it asks for before its endpoint is tried again.
    let mut failed: Option<(Tried, Duration)> = None;
    loop {
        let picked = pick(cluster, plan.hash, &tried[..n_tried], sent_at);
        let (idx, endpoint) = match (picked, failed.take()) {
            (Ok(p), None) => p,
            (Err(e), None) => return Err(e),
            (Err(_), Some((prev, _))) => return answer(cluster, prev, retry_permit, attempt - 1),
            (Ok(p), Some((prev, wait))) => {
                if p.0 == prev.idx {
                    if tokio::time::Instant::now() + wait >= plan.deadline {
                        return answer(cluster, prev, retry_permit, attempt - 1);
                    }
                    tokio::time::sleep(wait).await;
                }
                let Ok(permit) = cluster.limits.admit_retry(Instant::now()) else {
                    crate::metrics::retry(&cluster.name, "retry", "budget_exhausted");
                    tracing::debug!(cluster = %cluster.name, "retry not made: over budget");
                    return answer(cluster, prev, retry_permit, attempt - 1);
                };
                crate::metrics::retry(&cluster.name, "retry", "attempted");
                retry_permit = Some(permit);
                retried = true;
                // A one-shot body that came back unsent can go again; a replayable one needs
                // nothing.
                if let Err(f) = prev.result
                    && let Some(body) = f.body
                    && matches!(payload, Payload::Stream(_))
                {
                    *payload = Payload::Stream(Some(Box::new(body)));
                }
                sent_at = Instant::now();
                p
            }
        };
        remember(&mut tried, &mut n_tried, idx);
        on_attempt(&endpoint, attempt);
        // Hedging needs a body both attempts can send at once: only bodiless requests qualify.
        let hedge = plan
            .hedge
            .filter(|_| attempt == 1 && plan.idempotent && matches!(payload, Payload::Empty))
            .and_then(|h| h.delay(&cluster.latency));
        // While another attempt could follow a reset, small responses are read whole before the
        // client sees them.
        let buffer = attempt < policy.attempts
            && policy.wants(Failure::Error(&ProxyError::UpstreamReset), plan.idempotent)
            && payload.replayable();
        let mut done = match hedge {
            Some(delay) => {
                // Boxed: two attempts in one future are large, and most requests never hedge.
                let (done, second, permit) = Box::pin(hedged(
                    plan,
                    (idx, endpoint),
                    delay,
                    sent_at,
                    &tried[..n_tried],
                ))
                .await;
                if let Some(i) = second {
                    remember(&mut tried, &mut n_tried, i);
                    attempt += 1;
                }
                if permit.is_some() {
                    retry_permit = permit;
                }
                done
            }
            None => one(plan, idx, endpoint, payload.for_attempt(), sent_at).await,
        };
        if buffer {
            read_whole(plan, &mut done).await;
        }

        if good(policy, &done.result) {
            // (A hedge that answered is counted as the hedge's success, in `hedged`.)
            if retried {
                crate::metrics::retry(&cluster.name, "retry", "succeeded");
            }
            return answer(cluster, done, retry_permit, attempt);
        }
        // Another attempt? Only if the policy allows it for this failure and method, the body
        // can be sent again, and time is left.
        let failure = match &done.result {
            Ok(sent) => Failure::Status(sent.response.status()),
            Err(f) => Failure::Error(&f.error),
        };
        let retry_after = match &done.result {
            Ok(sent) => retry::retry_after(sent.response.headers()),
            Err(_) => None,
        };
        let backoff = RNG.with(|r| policy.backoff(attempt, &mut r.borrow_mut()));
        let returned_body = matches!(&done.result, Err(f) if f.body.is_some());
        let again = attempt < policy.attempts
            && policy.wants(failure, plan.idempotent)
            && (payload.replayable() || returned_body)
            && retry_after.is_none_or(|d| d <= policy.max_retry_after)
            && tokio::time::Instant::now() < plan.deadline;
        if !again {
            return answer(cluster, done, retry_permit, attempt);
        }
        // The failed attempt is answered for nothing else now: its outcome counts at once.
        let mut done = done;
        done.judge(plan.cluster);
        failed = Some((done, backoff.max(retry_after.unwrap_or_default())));
        attempt += 1;
    }
}

/// An endpoint not yet tried, or, when only tried ones are left, one of them again (that beats
/// giving up).
fn pick(
    cluster: &Cluster,
    hash: Option<u64>,
    tried: &[usize],
    now: Instant,
) -> Result<(usize, Arc<Endpoint>), ProxyError> {
    let members = cluster.members_now();
    let idx = cluster
        .pick(&members, hash, tried, now)
        .or_else(|| {
            (!tried.is_empty())
                .then(|| cluster.pick(&members, hash, &[], now))
                .flatten()
        })
        .ok_or(ProxyError::NoHealthyUpstream)?;
    let ep = members.endpoints.get(idx).ok_or(ProxyError::Internal)?;
    Ok((idx, Arc::clone(ep)))
}

fn remember(tried: &mut [usize; 10], n: &mut usize, idx: usize) {
    if let Some(slot) = tried.get_mut(*n) {
        *slot = idx;
        *n += 1;
    }
}

/// A response the client should get as it is.
fn good(policy: &RetryPolicy, result: &Result<Sent, Failed>) -> bool {
    matches!(result, Ok(sent) if !policy.retries_status(sent.response.status()))
}

fn answer(
    cluster: &Cluster,
    mut done: Tried,
    retry: Option<Permit>,
    attempts: u32,
) -> Result<Answer, ProxyError> {
    if done.result.is_err() {
        // No response goes out for this attempt: its outcome counts now.
        done.judge(cluster);
    }
    match done.result {
        Ok(sent) => Ok(Answer {
            sent,
            endpoint: done.endpoint,
            in_flight: done.in_flight,
            retry,
            upstream_time: done.rtt,
            attempts,
            verdict: done.outcome.map(|(o, _)| (o, done.rtt)),
        }),
        // In panic mode every endpoint is tried although none is believed healthy: when even
        // that reached none, the truth is that nothing can serve (503 UH, a last resort applies).
        Err(f) if f.error.never_sent() && cluster.members_now().plan.panic => {
            Err(ProxyError::NoHealthyUpstream)
        }
        Err(f) => Err(f.error),
    }
}

/// One attempt on `endpoint`, its outcome recorded.
async fn one(
    plan: &Plan<'_>,
    idx: usize,
    endpoint: Arc<Endpoint>,
    body: ProxyBody,
    sent_at: Instant,
) -> Tried {
    let in_flight = endpoint.stats.start();
    let try_start = tokio::time::Instant::from_std(sent_at);
    let limit = match (
        plan.cluster.response_header_timeout,
        plan.policy.per_try_timeout,
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let deadline = limit.map_or(plan.deadline, |t| plan.deadline.min(try_start + t));
    let result = forward::send(plan.cluster, &endpoint, plan.parts, body, deadline, sent_at).await;
    let answered = Instant::now();
    let rtt = answered.saturating_duration_since(sent_at);
    let outcome = record(plan.cluster, &endpoint, &result, rtt, answered).map(|o| (o, answered));
    Tried {
        result,
        endpoint,
        idx,
        in_flight,
        rtt,
        outcome,
    }
}

/// Reads a small HTTP/1.1 response's body whole, so that a failure mid-body becomes a failed
/// attempt (retried) instead of a cut response. Only a good answer with a `Content-Length` up to
/// `response_buffer_bytes` qualifies; a body that usually arrived with its head costs no wait.
async fn read_whole(plan: &Plan<'_>, done: &mut Tried) {
    let limit = plan.policy.response_buffer_bytes;
    let good = good(plan.policy, &done.result);
    // In place: only the body moves, not the whole response (this runs for most requests).
    let Ok(sent) = &mut done.result else {
        return;
    };
    let fits = good
        && matches!(sent.response.body(),
            UpstreamBody::H1(b) if b.size_hint().exact().is_some_and(|n| n > 0 && n <= limit));
    if !fits {
        return;
    }
    let UpstreamBody::H1(body) = std::mem::replace(
        sent.response.body_mut(),
        UpstreamBody::Buffered(Bytes::new()),
    ) else {
        return;
    };
    // Read straight off the connection (no `ProxyBody` around it): usually the body is already
    // in the read buffer and this is one poll. The cluster's body-idle limit bounds the wait.
    let read = tokio::time::timeout(plan.cluster.body_idle_timeout, read_all(body)).await;
    let error = match read {
        Ok(Ok(bytes)) => {
            *sent.response.body_mut() = UpstreamBody::Buffered(bytes);
            return;
        }
        Ok(Err(())) => ProxyError::UpstreamReset,
        Err(_) => ProxyError::UpstreamTimeout,
    };
    // The head counted as an answer; the attempt failed after all.
    let now = Instant::now();
    done.endpoint.stats.record_failure(done.rtt, now);
    crate::metrics::upstream_failure(&plan.cluster.name, error.flag());
    done.outcome = Some((Outcome::LocalFailure, now));
    done.result = Err(Failed { error, body: None });
}

/// A whole body: the one chunk as it came (the usual case: no copy, no list), or the chunks
/// joined. Trailers cannot follow a `Content-Length` body, so there are none to keep.
async fn read_all(mut body: crate::upstream::http1::ResponseBody) -> Result<Bytes, ()> {
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(drop)?.into_data() else {
            continue;
        };
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut joined = bytes::BytesMut::with_capacity(f.len() + data.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(r)) => r.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(r) => r.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// The first attempt, and after `delay` without an answer a second one to another endpoint (if
/// the budget allows); the first good answer wins and the other attempt is cancelled. Returns the
/// winner (or the last failure), the second endpoint's index if one was tried, and the hedge's
/// budget slot.
async fn hedged(
    plan: &Plan<'_>,
    (idx, endpoint): (usize, Arc<Endpoint>),
    delay: Duration,
    sent_at: Instant,
    tried: &[usize],
) -> (Tried, Option<usize>, Option<Permit>) {
    let cluster = plan.cluster;
    let first_endpoint = Arc::clone(&endpoint);
    let first = one(plan, idx, endpoint, ProxyBody::empty(), sent_at);
    tokio::pin!(first);
    tokio::select! {
        done = &mut first => return (done, None, None),
        () = tokio::time::sleep(delay) => {}
    }
    let Ok(permit) = cluster.limits.admit_retry(Instant::now()) else {
        crate::metrics::retry(&cluster.name, "hedge", "budget_exhausted");
        return (first.await, None, None);
    };
    let Ok((idx2, ep2)) = pick(cluster, plan.hash, tried, Instant::now()) else {
        return (first.await, None, None);
    };
    if idx2 == idx {
        // No other endpoint: a second request to the same one would only add load.
        return (first.await, None, None);
    }
    crate::metrics::retry(&cluster.name, "hedge", "attempted");
    let second = one(plan, idx2, ep2, ProxyBody::empty(), Instant::now());
    tokio::pin!(second);
    // The attempt that failed while the other was still running, if one did.
    let mut failed: Option<Tried> = None;
    let (mut first_live, mut second_live) = (true, true);
    loop {
        let (done, is_hedge) = tokio::select! {
            d = &mut first, if first_live => (d, false),
            d = &mut second, if second_live => (d, true),
        };
        if is_hedge {
            second_live = false;
        } else {
            first_live = false;
        }
        if good(plan.policy, &done.result) {
            if is_hedge {
                crate::metrics::retry(&cluster.name, "hedge", "succeeded");
            }
            match failed.take() {
                Some(mut f) => f.judge(cluster),
                None if is_hedge => {
                    // The first attempt is cancelled unanswered after the hedge delay and longer
                    // than a whole exchange elsewhere: count it as a timeout against its
                    // endpoint. Otherwise a hung or slow endpoint would never be seen (its
                    // attempts always cancelled) and would keep costing a hedge per request.
                    let now = Instant::now();
                    let waited = now.saturating_duration_since(sent_at);
                    first_endpoint.stats.record_failure(waited, now);
                    judge(cluster, &first_endpoint, Outcome::LocalFailure, waited, now);
                }
                // A hedge that loses is not counted: it had less time.
                None => {}
            }
            return (done, Some(idx2), Some(permit));
        }
        match failed.take() {
            // Both failed: the later failure decides what happens next.
            Some(mut f) => {
                f.judge(cluster);
                return (done, Some(idx2), Some(permit));
            }
            None => failed = Some(done),
        }
    }
}

/// What an attempt's outcome says about the endpoint.
fn outcome_of(status: StatusCode) -> Outcome {
    match status.as_u16() {
        502..=504 => Outcome::GatewayError,
        500..=599 => Outcome::ServerError,
        _ => Outcome::Success,
    }
}

/// Records one finished attempt in the endpoint's stats (latency, for the balancer), the metrics
/// and the cluster's latency histogram (for hedging), and returns what it says about the endpoint
/// for outlier detection (`judge`), or `None` when it was the client's fault.
fn record(
    cluster: &Cluster,
    ep: &Endpoint,
    result: &Result<Sent, Failed>,
    rtt: Duration,
    now: Instant,
) -> Option<Outcome> {
    let outcome = match result {
        Ok(sent) => {
            let status = sent.response.status();
            ep.metrics.record(status.as_u16(), rtt.as_secs_f64());
            outcome_of(status)
        }
        Err(f) if f.error.side() == Side::Upstream => {
            ep.metrics
                .record(f.error.status().as_u16(), rtt.as_secs_f64());
            crate::metrics::upstream_failure(&cluster.name, f.error.flag());
            Outcome::LocalFailure
        }
        Err(_) => return None,
    };
    if outcome == Outcome::Success {
        ep.stats.record_success(rtt, now);
        if cluster
            .track_latency
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            cluster.latency.record(rtt);
        }
    } else {
        ep.stats.record_failure(rtt, now);
    }
    Some(outcome)
}

/// Counts an outcome in the endpoint's outlier record, waking the health task when a threshold
/// was just crossed.
fn judge(cluster: &Cluster, ep: &Endpoint, outcome: Outcome, rtt: Duration, now: Instant) {
    if let Some(cfg) = &cluster.health.outlier
        && ep.health.record(cfg, outcome, rtt, now)
    {
        cluster.wake.notify_one();
    }
}

thread_local! {
    /// Backoff jitter.
    static RNG: std::cell::RefCell<fastrand::Rng> = std::cell::RefCell::new(fastrand::Rng::new());
}
