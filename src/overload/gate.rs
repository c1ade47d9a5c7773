//! `Gate`: the async admission gate in front of a cluster (and, as a second instance, in front of
//! the whole proxy). At most `limit` requests are in flight; beyond that a request waits in a
//! bounded queue, highest [`Priority`] first and FIFO within a priority, for at most
//! `queue_timeout`, and is then refused. A full queue makes room for a newcomer only by evicting a
//! waiter of strictly lower priority; otherwise the newcomer is refused at once.
//!
//! Owns: the in-flight count, the queue, handing a freed slot straight to the best waiter, and
//! cancellation (a waiter dropped mid-wait, even one a slot was just handed to, leaks nothing).
//! Does not own: choosing the limit (`overload::adaptive` calls [`Gate::set_limit`]), classifying
//! requests ([`super::shedder`]), or turning a [`Refused`] into a 503 + `Retry-After` and metrics
//! (the integrator).
//!
//! # Why it is race-free
//!
//! Every change to the queue, and every hand-off of a slot to a waiter, happens under one
//! `std::sync::Mutex` (never held across an `.await`). `in_flight` is an atomic so that the fast
//! path (nobody queued, a slot free) and a release with nobody queued take no lock; `queued`
//! mirrors the queue's length (written only under the lock) so those lock-free paths can see
//! whether anyone waits.
//!
//! - *Lost wake-up.* A newcomer that finds no slot publishes itself (`queued`) and then re-checks
//!   `in_flight`; a releaser decrements `in_flight` and then reads `queued`. Both are `SeqCst`,
//!   so at least one of them sees the other: either the newcomer's re-check takes the freed slot,
//!   or the releaser sees a waiter and dispatches under the lock. `set_limit` pairs with the
//!   newcomer the same way (limit written, then `queued` read).
//! - *Stolen slot.* The fast path is only taken while `queued == 0`, so once anyone waits,
//!   newcomers go through the lock and queue behind them; a freed slot is dispatched to the best
//!   waiter under the lock.
//! - *Cancellation.* A waiter is popped and sent its grant (a `oneshot`) in one critical section.
//!   When a waiter leaves (timeout or its future dropped) it takes the lock too: if it is still in
//!   its queue it removes itself and nothing was granted; if it is not, whatever was sent to it is
//!   already in its channel, so `try_recv` sees it. A slot found there on drop is released and
//!   dispatched to the next waiter at once, so it is neither leaked nor counted twice. A send that
//!   fails (only if a waiter future was leaked without running its destructor) gives the slot
//!   back and tries the next waiter.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering::SeqCst},
    },
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};

use super::shedder::Priority;

/// Why a request was not admitted; the integrator answers it with 503 + `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue was full of waiters of equal or higher priority (or `max_queue` is 0).
    QueueFull,
    /// No slot came free within `queue_timeout`.
    Timeout,
    /// A newcomer of higher priority took this waiter's place in a full queue.
    Evicted,
}

impl Refused {
    /// The metric label / access-log flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Timeout => "queue_timeout",
            Self::Evicted => "evicted",
        }
    }
}

/// What a waiter is sent: the slot (with `in_flight` counting it) or its eviction.
type Grant = Result<u32, Refused>;

#[derive(Debug)]
struct Waiter {
    /// Increasing in enqueue order, so each class's deque stays sorted by it.
    id: u64,
    tx: oneshot::Sender<Grant>,
}

/// The waiters, one FIFO per priority. Each deque's capacity only grows to its high-water mark,
/// which `max_queue` bounds.
#[derive(Debug, Default)]
struct Queue {
    sheddable: VecDeque<Waiter>,
    normal: VecDeque<Waiter>,
    critical: VecDeque<Waiter>,
    next_id: u64,
}

impl Queue {
    fn class(&mut self, priority: Priority) -> &mut VecDeque<Waiter> {
        match priority {
            Priority::Sheddable => &mut self.sheddable,
            Priority::Normal => &mut self.normal,
            Priority::Critical => &mut self.critical,
        }
    }

    fn len(&self) -> u32 {
        let len = self
            .sheddable
            .len()
            .saturating_add(self.normal.len())
            .saturating_add(self.critical.len());
        u32::try_from(len).unwrap_or(u32::MAX)
    }

    fn pop_best(&mut self) -> Option<Waiter> {
        self.critical
            .pop_front()
            .or_else(|| self.normal.pop_front())
            .or_else(|| self.sheddable.pop_front())
    }

    /// The newest waiter of the lowest non-empty class strictly below `priority`: it has invested
    /// the least time in the queue, and the older waiters of its class keep their FIFO order.
    fn evict_below(&mut self, priority: Priority) -> Option<Waiter> {
        [Priority::Sheddable, Priority::Normal]
            .into_iter()
            .filter(|&class| class < priority)
            .find_map(|class| self.class(class).pop_back())
    }

    /// Removes waiter `id`; false if it is no longer queued (granted or evicted).
    fn remove(&mut self, priority: Priority, id: u64) -> bool {
        let class = self.class(priority);
        match class.binary_search_by_key(&id, |w| w.id) {
            Ok(at) => class.remove(at).is_some(),
            Err(_) => false,
        }
    }
}

/// The admission gate; share it as `Arc<Gate>`.
#[derive(Debug)]
pub struct Gate {
    /// Requests allowed in flight at once; 0 admits nobody.
    limit: AtomicU32,
    /// Permits held now (including slots handed to a waiter that has not woken yet).
    in_flight: AtomicU32,
    /// Waiters queued now; mirrors `queue`'s length and is written only under its lock.
    queued: AtomicU32,
    /// Waiters allowed at once (all priorities together); 0 = no queue, refuse at once.
    max_queue: u32,
    /// How long a waiter waits for a slot before it is refused.
    queue_timeout: Duration,
    queue: Mutex<Queue>,
}

/// Outcome of the locked half of `acquire`.
enum Admission<'a> {
    /// A slot, with `in_flight` counting it.
    Now(u32),
    Queued(Waiting<'a>),
}

impl Gate {
    /// A gate admitting `limit` requests at once, queueing up to `max_queue` more for up to
    /// `queue_timeout` each.
    pub fn new(limit: u32, max_queue: u32, queue_timeout: Duration) -> Self {
        Self {
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            max_queue,
            queue_timeout,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Changes the limit. Raising it hands the new slots to waiters at once; lowering it revokes
    /// nothing, it only admits nobody until `in_flight` has fallen below the new limit.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, SeqCst);
        if self.queued.load(SeqCst) > 0 {
            let mut queue = self.lock();
            self.dispatch(&mut queue);
        }
    }

    /// Requests allowed in flight at once.
    pub fn limit(&self) -> u32 {
        self.limit.load(SeqCst)
    }

    /// Permits held now (may exceed `limit` for a while after it was lowered).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(SeqCst)
    }

    /// Requests waiting in the queue now.
    pub fn queued(&self) -> u32 {
        self.queued.load(SeqCst)
    }

    /// Waits for a slot, as long as the caller polls the future; dropping it leaves the queue.
    ///
    /// Admits at once (no lock) when a slot is free and nobody waits. Otherwise queues, or is
    /// refused at once with [`Refused::QueueFull`] (no allocation, no wait) when the queue is full
    /// of waiters of equal or higher priority. A queued request is refused with
    /// [`Refused::Evicted`] if a higher-priority newcomer needs its place, or
    /// [`Refused::Timeout`] after `queue_timeout`. A slot granted at the very moment the timeout
    /// fires is kept (the request is admitted).
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Result<GatePermit, Refused> {
        if self.queued.load(SeqCst) == 0
            && let Some(in_flight) = self.take_slot()
        {
            return Ok(self.permit(Duration::ZERO, in_flight));
        }
        let mut waiting = match self.enqueue(priority)? {
            Admission::Now(in_flight) => return Ok(self.permit(Duration::ZERO, in_flight)),
            Admission::Queued(waiting) => waiting,
        };
        let in_flight = waiting.wait(self.queue_timeout).await?;
        Ok(self.permit(waiting.since.elapsed(), in_flight))
    }

    fn permit(self: &Arc<Self>, queued_for: Duration, in_flight_at_start: u32) -> GatePermit {
        GatePermit {
            gate: Arc::clone(self),
            queued_for,
            in_flight_at_start,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics under this lock; if something ever did, the queue is still consistent
        // (every mutation is a single push/pop/remove), so carry on rather than wedge the proxy.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more request in flight if that stays within the limit; the new count.
    fn take_slot(&self) -> Option<u32> {
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |n| {
                (n < self.limit.load(SeqCst)).then(|| n.saturating_add(1))
            })
            .ok()
            .map(|before| before.saturating_add(1))
    }

    fn give_back_slot(&self) {
        // Saturating: a release can never drive the count below zero, even if a bug paired it
        // with no acquire.
        let _ = self
            .in_flight
            .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
    }

    /// A permit's slot comes back: hand it to the best waiter, if any.
    fn release(&self) {
        self.give_back_slot();
        if self.queued.load(SeqCst) > 0 {
            let mut queue = self.lock();
            self.dispatch(&mut queue);
        }
    }

    /// Hands free slots to the best waiters, as many as there are of both.
    fn dispatch(&self, queue: &mut Queue) {
        while self.queued.load(SeqCst) > 0 {
            let Some(in_flight) = self.take_slot() else {
                return;
            };
            let Some(waiter) = queue.pop_best() else {
                // `queued` mirrors the queue, so this is unreachable; never strand the slot.
                self.give_back_slot();
                self.queued.store(0, SeqCst);
                return;
            };
            self.queued.store(queue.len(), SeqCst);
            if waiter.tx.send(Ok(in_flight)).is_err() {
                self.give_back_slot();
            }
        }
    }

    /// The locked half of `acquire`: a slot if one is free and nobody waits, else a place in the
    /// queue (evicting a lower-priority waiter if it is full), else a refusal.
    fn enqueue(&self, priority: Priority) -> Result<Admission<'_>, Refused> {
        let mut queue = self.lock();
        if queue.len() == 0
            && let Some(in_flight) = self.take_slot()
        {
            return Ok(Admission::Now(in_flight));
        }
        if queue.len() >= self.max_queue {
            let victim = queue.evict_below(priority).ok_or(Refused::QueueFull)?;
            // The send fails only for a leaked waiter future; there is nothing to undo then.
            let _ = victim.tx.send(Err(Refused::Evicted));
        }
        let (tx, rx) = oneshot::channel();
        let id = queue.next_id;
        queue.next_id = id.wrapping_add(1);
        queue.class(priority).push_back(Waiter { id, tx });
        // Publish the waiter before `dispatch` re-checks `in_flight` (see the module doc).
        self.queued.store(queue.len(), SeqCst);
        self.dispatch(&mut queue);
        Ok(Admission::Queued(Waiting {
            gate: self,
            priority,
            id,
            rx,
            since: Instant::now(),
            settled: false,
        }))
    }
}

/// A queued request; dropping it before it settled leaves the queue or passes on its slot.
struct Waiting<'a> {
    gate: &'a Gate,
    priority: Priority,
    id: u64,
    rx: oneshot::Receiver<Grant>,
    /// When it was queued, for `queued_for`.
    since: Instant,
    /// The outcome was taken; nothing is left to clean up.
    settled: bool,
}

impl Waiting<'_> {
    async fn wait(&mut self, timeout: Duration) -> Grant {
        // First polled in the same poll as the enqueue, so this deadline is `since + timeout`;
        // `timeout` (unlike adding to an `Instant`) copes with an absurdly long one.
        let grant = match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(grant)) => grant,
            // Every waiter taken off the queue is sent something first, so the sender is never
            // dropped unsent while we wait; should it be, we were not admitted.
            Ok(Err(_)) => Err(Refused::Evicted),
            Err(_) => {
                let mut queue = self.gate.lock();
                self.leave(&mut queue).unwrap_or(Err(Refused::Timeout))
            }
        };
        self.settled = true;
        grant
    }

    /// Takes this waiter out of the queue for good. `None` if it was still queued (nothing was
    /// granted); otherwise what it was sent, which is already in the channel because sends happen
    /// under the lock the caller holds.
    fn leave(&mut self, queue: &mut Queue) -> Option<Grant> {
        if queue.remove(self.priority, self.id) {
            self.gate.queued.store(queue.len(), SeqCst);
            return None;
        }
        self.rx.try_recv().ok()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut queue = self.gate.lock();
        if let Some(Ok(_)) = self.leave(&mut queue) {
            // The slot was handed over just as the client went away: pass it on.
            self.gate.give_back_slot();
            self.gate.dispatch(&mut queue);
        }
    }
}

/// One admitted request's slot; dropping it frees the slot, handing it straight to the best
/// waiter if there is one.
#[derive(Debug)]
#[must_use = "dropping the permit gives its slot back at once"]
pub struct GatePermit {
    gate: Arc<Gate>,
    queued_for: Duration,
    in_flight_at_start: u32,
}

impl GatePermit {
    /// How long the request waited in the queue (zero if it was admitted at once).
    pub fn queued_for(&self) -> Duration {
        self.queued_for
    }

    /// Requests in flight when this one was admitted, this one included (so at least 1).
    pub fn in_flight_at_start(&self) -> u32 {
        self.in_flight_at_start
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        future::Future,
        pin::Pin,
        sync::atomic::AtomicBool,
        task::{Context, Poll, Waker},
    };

    use proptest::prelude::*;

    use super::*;

    const PRIOS: [Priority; 3] = [Priority::Sheddable, Priority::Normal, Priority::Critical];
    const HOUR: Duration = Duration::from_secs(3600);

    type Acquire<'a> = Pin<Box<dyn Future<Output = Result<GatePermit, Refused>> + 'a>>;

    fn gate(limit: u32, max_queue: u32, timeout: Duration) -> Arc<Gate> {
        Arc::new(Gate::new(limit, max_queue, timeout))
    }

    /// Polls once without a real waker: the tests drive every future by hand, in a known order.
    fn poll<F: Future + ?Sized>(f: &mut Pin<Box<F>>) -> Poll<F::Output> {
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    fn now(gate: &Arc<Gate>, p: Priority) -> GatePermit {
        match poll(&mut Box::pin(gate.acquire(p))) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("expected a permit at once, got {other:?}"),
        }
    }

    fn queued(gate: &Arc<Gate>, p: Priority) -> Acquire<'_> {
        let mut f: Acquire<'_> = Box::pin(gate.acquire(p));
        assert!(poll(&mut f).is_pending(), "expected to queue");
        f
    }

    fn refused(gate: &Arc<Gate>, p: Priority) -> Refused {
        match poll(&mut Box::pin(gate.acquire(p))) {
            Poll::Ready(Err(r)) => r,
            other => panic!("expected a refusal at once, got {other:?}"),
        }
    }

    fn granted(f: &mut Acquire<'_>) -> GatePermit {
        match poll(f) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("expected the waiter to be granted, got {other:?}"),
        }
    }

    #[test]
    fn refusal_labels() {
        assert_eq!(Refused::QueueFull.as_str(), "queue_full");
        assert_eq!(Refused::Timeout.as_str(), "queue_timeout");
        assert_eq!(Refused::Evicted.as_str(), "evicted");
    }

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_the_limit_then_queues() {
        let g = gate(2, 4, HOUR);
        let a = now(&g, Priority::Normal);
        let b = now(&g, Priority::Sheddable);
        assert_eq!((a.in_flight_at_start(), b.in_flight_at_start()), (1, 2));
        assert_eq!(a.queued_for(), Duration::ZERO);
        let mut w = queued(&g, Priority::Critical);
        assert_eq!((g.in_flight(), g.queued()), (2, 1));
        drop(a);
        // Handed over directly: the count never dipped, the waiter holds the slot.
        assert_eq!((g.in_flight(), g.queued()), (2, 0));
        let c = granted(&mut w);
        assert_eq!(c.in_flight_at_start(), 2);
        drop((b, c));
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn newcomer_does_not_jump_the_queue_for_a_freed_slot() {
        let g = gate(1, 4, HOUR);
        let a = now(&g, Priority::Normal);
        let mut w = queued(&g, Priority::Normal);
        drop(a);
        // The slot went to `w` before it even woke; a newcomer (even Critical) must wait.
        let mut late = queued(&g, Priority::Critical);
        let p = granted(&mut w);
        drop(p);
        drop(granted(&mut late));
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_within_a_priority() {
        let g = gate(1, 8, HOUR);
        let mut held = Some(now(&g, Priority::Normal));
        let mut waiters: Vec<_> = (0..5).map(|_| queued(&g, Priority::Normal)).collect();
        for i in 0..waiters.len() {
            drop(held.take());
            for later in waiters.iter_mut().skip(i + 1) {
                assert!(poll(later).is_pending(), "waiter {i} must go first");
            }
            held = Some(granted(&mut waiters[i]));
        }
        drop(held);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn highest_priority_first_across_classes() {
        let g = gate(1, 8, HOUR);
        let mut held = Some(now(&g, Priority::Normal));
        // Enqueued in this order; expected service order in the second column.
        let mut waiters = vec![
            (queued(&g, Priority::Sheddable), 4),
            (queued(&g, Priority::Normal), 1),
            (queued(&g, Priority::Critical), 0),
            (queued(&g, Priority::Normal), 2),
            (queued(&g, Priority::Sheddable), 5),
            (queued(&g, Priority::Normal), 3),
        ];
        for turn in 0..waiters.len() {
            drop(held.take());
            for (f, order) in &mut waiters {
                if *order == turn {
                    held = Some(granted(f));
                } else if *order > turn {
                    assert!(poll(f).is_pending(), "turn {turn}: {order} must wait");
                }
            }
            assert!(held.is_some(), "turn {turn}: nobody was granted");
        }
        drop(held);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_evicts_the_newest_lowest_priority_waiter() {
        let g = gate(1, 2, HOUR);
        let held = now(&g, Priority::Normal);
        let mut s1 = queued(&g, Priority::Sheddable);
        let mut s2 = queued(&g, Priority::Sheddable);
        // Equal priority cannot evict: refused at once.
        assert_eq!(refused(&g, Priority::Sheddable), Refused::QueueFull);
        let mut n1 = queued(&g, Priority::Normal);
        assert!(matches!(poll(&mut s2), Poll::Ready(Err(Refused::Evicted))));
        assert!(poll(&mut s1).is_pending());
        assert_eq!(g.queued(), 2);
        let mut c1 = queued(&g, Priority::Critical);
        assert!(matches!(poll(&mut s1), Poll::Ready(Err(Refused::Evicted))));
        // Now Normal + Critical wait: a Normal newcomer evicts nobody.
        assert_eq!(refused(&g, Priority::Normal), Refused::QueueFull);
        assert_eq!(refused(&g, Priority::Sheddable), Refused::QueueFull);
        assert_eq!(g.queued(), 2);
        drop(held);
        let c = granted(&mut c1);
        drop(c);
        drop(granted(&mut n1));
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn max_queue_zero_refuses_at_once() {
        let g = gate(1, 0, HOUR);
        let a = now(&g, Priority::Sheddable);
        for p in PRIOS {
            assert_eq!(refused(&g, p), Refused::QueueFull);
        }
        assert_eq!((g.in_flight(), g.queued()), (1, 0));
        drop(a);
        drop(now(&g, Priority::Normal));
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_after_exactly_queue_timeout() {
        let timeout = Duration::from_millis(250);
        let g = gate(1, 4, timeout);
        let held = now(&g, Priority::Normal);
        let mut w = queued(&g, Priority::Normal);
        tokio::time::advance(timeout - Duration::from_millis(1)).await;
        assert!(poll(&mut w).is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(poll(&mut w), Poll::Ready(Err(Refused::Timeout))));
        assert_eq!((g.in_flight(), g.queued()), (1, 0));
        drop(w);
        drop(held);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_when_awaited() {
        let timeout = Duration::from_millis(40);
        let g = gate(1, 4, timeout);
        let _held = now(&g, Priority::Critical);
        let start = Instant::now();
        assert!(matches!(
            g.acquire(Priority::Critical).await,
            Err(Refused::Timeout)
        ));
        assert_eq!(start.elapsed(), timeout);
        assert_eq!(g.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_queue_timeout_never_fires() {
        let g = gate(1, 4, Duration::MAX);
        let held = now(&g, Priority::Normal);
        let mut w = queued(&g, Priority::Normal);
        tokio::time::advance(Duration::from_secs(86_400)).await;
        assert!(poll(&mut w).is_pending());
        drop(held);
        drop(granted(&mut w));
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queued_for_measures_the_wait() {
        let g = gate(1, 4, HOUR);
        let held = now(&g, Priority::Normal);
        let mut w = queued(&g, Priority::Normal);
        tokio::time::advance(Duration::from_millis(30)).await;
        drop(held);
        let p = granted(&mut w);
        assert_eq!(p.queued_for(), Duration::from_millis(30));
        assert_eq!(p.in_flight_at_start(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_leaves_the_queue_and_releases_nothing() {
        let g = gate(1, 4, HOUR);
        let held = now(&g, Priority::Normal);
        let w1 = queued(&g, Priority::Normal);
        let mut w2 = queued(&g, Priority::Normal);
        assert_eq!(g.queued(), 2);
        drop(w1);
        assert_eq!((g.in_flight(), g.queued()), (1, 1));
        // w1's place is gone, so the freed slot goes to w2.
        drop(held);
        let p = granted(&mut w2);
        assert_eq!((g.in_flight(), g.queued()), (1, 0));
        drop(p);
        drop(w2);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn slot_handed_to_a_dropped_waiter_passes_to_the_next() {
        let g = gate(1, 4, HOUR);
        let held = now(&g, Priority::Normal);
        let w1 = queued(&g, Priority::Critical);
        let mut w2 = queued(&g, Priority::Normal);
        drop(held); // the slot is sent to w1...
        assert_eq!((g.in_flight(), g.queued()), (1, 1));
        drop(w1); // ...which goes away before it wakes.
        assert_eq!((g.in_flight(), g.queued()), (1, 0));
        let p = granted(&mut w2);
        assert_eq!(p.in_flight_at_start(), 1);
        drop(p);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
        // With nobody to pass it to, the slot is simply freed.
        let held = now(&g, Priority::Normal);
        let w = queued(&g, Priority::Normal);
        drop(held);
        drop(w);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_limit_wakes_as_many_waiters_as_new_slots() {
        let g = gate(1, 8, HOUR);
        let _held = now(&g, Priority::Normal);
        let mut ws: Vec<_> = (0..4).map(|_| queued(&g, Priority::Normal)).collect();
        g.set_limit(3);
        assert_eq!((g.in_flight(), g.queued()), (3, 2));
        let p0 = granted(&mut ws[0]);
        let p1 = granted(&mut ws[1]);
        assert_eq!((p0.in_flight_at_start(), p1.in_flight_at_start()), (2, 3));
        assert!(poll(&mut ws[2]).is_pending());
        assert!(poll(&mut ws[3]).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_limit_holds_back_until_below_it() {
        let g = gate(3, 8, HOUR);
        let mut held: Vec<_> = (0..3).map(|_| now(&g, Priority::Normal)).collect();
        g.set_limit(1);
        assert_eq!(g.in_flight(), 3, "held permits are not revoked");
        let mut w = queued(&g, Priority::Critical);
        held.pop();
        assert!(poll(&mut w).is_pending(), "2 in flight, limit 1");
        held.pop();
        assert!(poll(&mut w).is_pending(), "1 in flight, limit 1");
        held.pop();
        let p = granted(&mut w);
        assert_eq!((p.in_flight_at_start(), g.in_flight()), (1, 1));
        // Limit 0 admits nobody, not even on the fast path.
        drop(p);
        g.set_limit(0);
        let mut z = queued(&g, Priority::Critical);
        g.set_limit(1);
        drop(granted(&mut z));
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn grant_at_the_deadline_is_kept() {
        let timeout = Duration::from_millis(100);
        let g = gate(1, 4, timeout);
        let held = now(&g, Priority::Normal);
        let mut w = queued(&g, Priority::Normal);
        tokio::time::advance(timeout).await;
        drop(held); // the slot arrives as the timer fires
        let p = granted(&mut w);
        assert_eq!(p.queued_for(), timeout);
        drop(p);
        assert_eq!((g.in_flight(), g.queued()), (0, 0));
    }

    /// Counts a task out of `live` when dropped.
    struct Leave(Arc<AtomicU32>);

    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.fetch_sub(1, SeqCst);
        }
    }

    /// Many tasks on two worker threads, random priorities, some cancelled mid-wait: the limit
    /// holds at every moment, and every count returns to zero.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limit_holds_under_concurrent_acquirers() {
        for seed in 0..8u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let limit = rng.u32(1..=6);
            let g = gate(limit, 1_000, HOUR);
            let live = Arc::new(AtomicU32::new(0));
            let exceeded = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for _ in 0..300 {
                let prio = PRIOS[rng.usize(0..PRIOS.len())];
                let work = rng.u32(0..4);
                let (g, live, exceeded) =
                    (Arc::clone(&g), Arc::clone(&live), Arc::clone(&exceeded));
                let task = tokio::spawn(async move {
                    let permit = g.acquire(prio).await.expect("queue and timeout are ample");
                    let n = live.fetch_add(1, SeqCst) + 1;
                    // Declared after the permit, so dropped before it, on return or on abort
                    // (an aborted task must not leave its count behind: that was a false alarm).
                    let _live = Leave(live);
                    if n > limit || permit.in_flight_at_start() > limit {
                        exceeded.store(true, SeqCst);
                    }
                    for _ in 0..work {
                        tokio::task::yield_now().await;
                    }
                });
                tasks.push((task, rng.u8(0..10) == 0));
            }
            for (task, cancel) in &tasks {
                if *cancel {
                    task.abort();
                }
            }
            for (task, cancel) in tasks {
                match task.await {
                    Ok(()) => {}
                    Err(e) => assert!(cancel && e.is_cancelled(), "seed {seed}: {e}"),
                }
            }
            assert!(
                !exceeded.load(SeqCst),
                "seed {seed}: more than {limit} in flight"
            );
            assert_eq!((g.in_flight(), g.queued()), (0, 0), "seed {seed}");
        }
    }

    /// A release on another thread racing a newcomer's enqueue must never strand the newcomer
    /// (the lost wake-up the `SeqCst` pairing in the module doc rules out): once the release is
    /// done, the newcomer holds the slot, whichever of them got there first. Both sides start
    /// from a barrier every round, so the window is hit often.
    #[test]
    fn release_racing_an_enqueue_never_strands_the_waiter() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let _rt = rt.enter();
        let g = gate(1, 4, HOUR);
        let barrier = std::sync::Barrier::new(2);
        let (tx, rx) = std::sync::mpsc::channel::<GatePermit>();
        std::thread::scope(|s| {
            s.spawn(|| {
                // A varying head start sweeps the release across the newcomer's whole path.
                let mut rng = fastrand::Rng::with_seed(7);
                for held in rx {
                    barrier.wait();
                    for _ in 0..rng.u32(0..3_000) {
                        std::hint::spin_loop();
                    }
                    drop(held);
                    barrier.wait();
                }
            });
            for round in 0..20_000 {
                tx.send(now(&g, Priority::Normal)).expect("helper alive");
                barrier.wait();
                let mut f = Box::pin(g.acquire(Priority::Normal));
                let first = poll(&mut f);
                barrier.wait();
                let got = match first {
                    Poll::Ready(got) => got,
                    Poll::Pending => match poll(&mut f) {
                        Poll::Ready(got) => got,
                        Poll::Pending => panic!("round {round}: stranded in the queue"),
                    },
                };
                assert!(got.is_ok(), "round {round}: {got:?}");
                drop((got, f));
                assert_eq!((g.in_flight(), g.queued()), (0, 0), "round {round}");
            }
            drop(tx);
        });
    }

    // ---- model-based property test -------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Acquire(usize),
        Release(usize),
        DropWaiter(usize),
        PollAll,
        SetLimit(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize).prop_map(Op::Acquire),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<usize>().prop_map(Op::DropWaiter),
            2 => Just(Op::PollAll),
            1 => (0..5u32).prop_map(Op::SetLimit),
        ]
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fate {
        Queued,
        Granted(u32),
        Evicted,
        Gone,
    }

    /// The spec, written naively: who should hold what after each step.
    struct Model {
        limit: u32,
        max_queue: u32,
        in_flight: u32,
        queues: [VecDeque<usize>; 3],
        fates: Vec<Fate>,
    }

    impl Model {
        fn queued(&self) -> u32 {
            self.queues.iter().map(|q| q.len() as u32).sum()
        }

        /// The outcome of a newcomer: `Some(Ok(n))` admitted, `Some(Err(_))` refused, `None` queued.
        fn acquire(&mut self, id: usize, class: usize) -> Option<Result<u32, Refused>> {
            self.fates.push(Fate::Gone);
            if self.queued() == 0 && self.in_flight < self.limit {
                self.in_flight += 1;
                return Some(Ok(self.in_flight));
            }
            if self.queued() >= self.max_queue {
                let victim = (0..class).find(|&c| !self.queues[c].is_empty());
                let victim = victim.and_then(|c| self.queues[c].pop_back());
                match victim {
                    Some(v) => self.fates[v] = Fate::Evicted,
                    None => return Some(Err(Refused::QueueFull)),
                }
            }
            self.queues[class].push_back(id);
            self.fates[id] = Fate::Queued;
            None
        }

        fn dispatch(&mut self) {
            while self.in_flight < self.limit {
                let Some(id) = self.queues.iter_mut().rev().find_map(|q| q.pop_front()) else {
                    return;
                };
                self.in_flight += 1;
                self.fates[id] = Fate::Granted(self.in_flight);
            }
        }

        fn drop_waiter(&mut self, id: usize) {
            match self.fates[id] {
                Fate::Queued => self.queues.iter_mut().for_each(|q| q.retain(|&w| w != id)),
                Fate::Granted(_) => self.in_flight -= 1,
                Fate::Evicted | Fate::Gone => {}
            }
            self.fates[id] = Fate::Gone;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Drives the gate and the model with the same random steps (acquires of every priority,
        /// releases, cancelled waiters including ones just handed a slot, limit changes): every
        /// admission, refusal, eviction, grant order and `in_flight_at_start` must match, and the
        /// counts must agree after every step.
        #[test]
        fn gate_matches_the_model(
            limit in 0..4u32,
            max_queue in 0..5u32,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let _rt = rt.enter();
            let g = gate(limit, max_queue, HOUR);
            let mut m = Model { limit, max_queue, in_flight: 0, queues: Default::default(), fates: vec![] };
            let mut permits: Vec<GatePermit> = vec![];
            let mut waiters: Vec<(usize, Acquire<'_>)> = vec![];
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Acquire(class) => {
                        let id = m.fates.len();
                        let mut f: Acquire<'_> = Box::pin(g.acquire(PRIOS[class]));
                        let got = poll(&mut f);
                        let want = m.acquire(id, class);
                        match (got, want) {
                            (Poll::Ready(Ok(p)), Some(Ok(n))) => {
                                prop_assert_eq!(p.in_flight_at_start(), n, "step {}", step);
                                permits.push(p);
                            }
                            (Poll::Ready(Err(r)), Some(Err(w))) => prop_assert_eq!(r, w),
                            (Poll::Pending, None) => waiters.push((id, f)),
                            (got, want) => prop_assert!(false, "step {}: got {:?}, want {:?}", step, got, want),
                        }
                    }
                    Op::Release(i) => {
                        if !permits.is_empty() {
                            drop(permits.swap_remove(i % permits.len()));
                            m.in_flight -= 1;
                        }
                    }
                    Op::DropWaiter(i) => {
                        if !waiters.is_empty() {
                            let (id, f) = waiters.swap_remove(i % waiters.len());
                            drop(f);
                            m.drop_waiter(id);
                        }
                    }
                    Op::PollAll => {
                        let mut still = vec![];
                        for (id, mut f) in waiters.drain(..) {
                            match (poll(&mut f), m.fates[id]) {
                                (Poll::Pending, Fate::Queued) => {
                                    still.push((id, f));
                                    continue;
                                }
                                (Poll::Ready(Ok(p)), Fate::Granted(n)) => {
                                    prop_assert_eq!(p.in_flight_at_start(), n, "step {}", step);
                                    permits.push(p);
                                }
                                (Poll::Ready(Err(Refused::Evicted)), Fate::Evicted) => {}
                                (got, want) => prop_assert!(false, "step {}: waiter {} got {:?}, want {:?}", step, id, got, want),
                            }
                            m.fates[id] = Fate::Gone;
                        }
                        waiters = still;
                    }
                    Op::SetLimit(n) => {
                        g.set_limit(n);
                        m.limit = n;
                    }
                }
                m.dispatch();
                prop_assert_eq!(g.in_flight(), m.in_flight, "step {}", step);
                prop_assert_eq!(g.queued(), m.queued(), "step {}", step);
                prop_assert!(g.queued() <= max_queue);
            }
            drop(waiters);
            drop(permits);
            prop_assert_eq!((g.in_flight(), g.queued()), (0, 0));
        }
    }
}
