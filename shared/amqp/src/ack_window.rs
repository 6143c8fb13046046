//! The ack window of one consuming channel: acks of finished deliveries go out as one
//! `basic.ack(multiple=true)` over the contiguous run of finished delivery tags instead of
//! one frame per delivery.
//!
//! Why a multiple ack covers exactly the run: RabbitMQ acks, for `basic.ack(tag,
//! multiple=true)`, every delivery of the channel still outstanding with a tag up to `tag`
//! (<https://www.rabbitmq.com/docs/confirms#consumer-acks-multiple-parameter>). Every delivery
//! handed out is registered here in tag order (lapin numbers a channel's deliveries 1, 2, 3, …
//! and the subscription hands them out in that order), and an entry leaves the window only once
//! the frame that settled it was written (lapin resolves a frame's promise when it is written,
//! and writes a channel's frames in order). So below the first entry nothing is outstanding
//! any more, and a multiple ack up to the end of the front run of finished entries acks that
//! run and nothing else.
//!
//! What must never be covered stays in the window and blocks the run: a delivery still held
//! (a long job, a delivery waiting for the pause breaker), one whose own frame (a nack, a lone
//! ack, an earlier multiple ack) is still on its way — a multiple ack overtaking it would make
//! that frame a double ack, `PRECONDITION_FAILED`, and close the channel — and one dropped
//! unsettled or whose frame failed ([`Slot::Abandoned`]: the broker may still count it
//! outstanding, so it stays until the channel goes, and every ack above it goes alone at once).
//!
//! A finished delivery with a held one below waits [`COVER_WAIT`] for a lower ack to cover it,
//! then acks alone (`multiple=false`), which is always safe while its entry blocks the run.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use fleet_core::BrokerError;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a finished delivery waits for a lower one to cover it before it acks alone.
///
/// Short: the jobs below a finished one usually finish within a few milliseconds of each
/// other; one stuck behind a long job costs this much latency once, not a slot for the job's
/// duration.
pub(crate) const COVER_WAIT: Duration = Duration::from_millis(20);

/// Ack frames sent and deliveries they acked, over every subscription of a broker.
#[derive(Debug, Default)]
pub(crate) struct AckCounters {
    /// `basic.ack` frames handed to lapin (single or multiple).
    pub(crate) frames: AtomicU64,
    /// Deliveries those frames acked.
    pub(crate) deliveries: AtomicU64,
}

/// A delivery's place in the window (`A`: its ack handle, lapin's [`lapin::Acker`]).
enum Slot<A> {
    /// Handed out, not settled.
    Held,
    /// Acked by its owner, who waits for a frame to cover it; the handle sends a multiple ack
    /// ending at it.
    Finished(Arc<Waiter>, A),
    /// In a frame not yet written.
    Sending,
    /// Dropped unsettled, or its frame failed: never covered, blocks the run for good.
    Abandoned,
}

struct Entry<A> {
    tag: u64,
    slot: Slot<A>,
}

/// Where an ack's owner waits: woken when its frame was written (`result` set) or when its
/// entry became the first of the window (it sends the run then).
#[derive(Default)]
struct Waiter {
    wake: Notify,
    result: OnceLock<Result<(), BrokerError>>,
}

impl Waiter {
    fn resolve(&self, result: &Result<(), BrokerError>) {
        let _ = self.result.set(result.clone());
        self.wake.notify_one();
    }
}

/// The front run taken for one frame: tags `first..=hi`, `count` entries.
struct Run<A> {
    first: u64,
    hi: u64,
    count: usize,
    /// The handle of `hi` when it is not the sender's own entry (`count` > 1).
    last: Option<A>,
    /// The owners of the entries after the first, resolved with the frame's result.
    waiters: Vec<Arc<Waiter>>,
}

/// What the owner of a finished delivery does next.
enum Step<A> {
    /// Send one frame acking the run (its own entry first).
    Send(Run<A>),
    /// Ack alone, now (`multiple=false`): something abandoned lies below.
    Alone,
    /// Wait to be covered (or woken as the new first entry).
    Wait(Arc<Waiter>),
}

/// The entries of one channel, in tag order. Pure bookkeeping: no I/O, no waiting.
struct Entries<A> {
    list: VecDeque<Entry<A>>,
    /// The lowest abandoned tag: nothing above it can ever be covered by a multiple ack.
    lowest_abandoned: Option<u64>,
}

impl<A> Default for Entries<A> {
    fn default() -> Self {
        Entries {
            list: VecDeque::new(),
            lowest_abandoned: None,
        }
    }
}

impl<A: Clone> Entries<A> {
    fn register(&mut self, tag: u64) {
        debug_assert!(self.list.back().is_none_or(|e| e.tag < tag));
        self.list.push_back(Entry {
            tag,
            slot: Slot::Held,
        });
    }

    fn position(&self, tag: u64) -> Option<usize> {
        self.list.binary_search_by_key(&tag, |e| e.tag).ok()
    }

    fn blocked_for_good(&self, tag: u64) -> bool {
        self.lowest_abandoned.is_some_and(|low| low < tag)
    }

    /// Marks the front run of finished entries (the first one is the caller's) as sending.
    fn take_run(&mut self) -> Run<A> {
        let mut waiters = Vec::new();
        let mut count = 0;
        let mut last = None;
        let first = self.list.front().map_or(0, |e| e.tag);
        let mut hi = first;
        for (i, e) in self.list.iter_mut().enumerate() {
            if i > 0 {
                let Slot::Finished(w, a) = &e.slot else { break };
                waiters.push(w.clone());
                last = Some(a.clone());
            }
            e.slot = Slot::Sending;
            hi = e.tag;
            count += 1;
        }
        Run {
            first,
            hi,
            count,
            last,
            waiters,
        }
    }

    /// The owner of `tag` acks it.
    fn finish(&mut self, tag: u64, handle: &A) -> Step<A> {
        match self.position(tag) {
            Some(0) => Step::Send(self.take_run()),
            Some(i) if self.blocked_for_good(tag) => {
                self.list[i].slot = Slot::Sending;
                Step::Alone
            }
            Some(i) => {
                let w = Arc::new(Waiter::default());
                self.list[i].slot = Slot::Finished(w.clone(), handle.clone());
                Step::Wait(w)
            }
            // Not registered (cannot happen: every delivery is): no run can span it unseen
            // only if it was never outstanding, so the safe answer is a lone ack.
            None => Step::Alone,
        }
    }

    /// The owner of finished `tag` woke up (`late`: its wait is over): what now?
    fn retake(&mut self, tag: u64, late: bool) -> Option<Step<A>> {
        let i = self.position(tag)?;
        match self.list[i].slot {
            Slot::Finished(..) if i == 0 => Some(Step::Send(self.take_run())),
            Slot::Finished(..) if late => {
                self.list[i].slot = Slot::Sending;
                Some(Step::Alone)
            }
            // Still waiting, or taken into someone's run: its result comes.
            _ => None,
        }
    }

    /// Marks `tag` as sending its own frame (a nack, or a lone ack).
    fn start_alone(&mut self, tag: u64) {
        if let Some(i) = self.position(tag) {
            self.list[i].slot = Slot::Sending;
        }
    }

    /// Frame for `count` entries from `first` written (`ok`) or failed: the waiter of the new
    /// first entry if it is finished (it sends the next run).
    fn sent(&mut self, first: u64, count: usize, ok: bool) -> Option<Arc<Waiter>> {
        let at = self.position(first)?;
        if ok {
            self.list.drain(at..at + count);
        } else {
            for e in self.list.range_mut(at..at + count) {
                e.slot = Slot::Abandoned;
            }
            self.note_abandoned(first);
        }
        self.first_finished()
    }

    /// `tag` dropped unsettled (held, or its ack cancelled while waiting to be covered): the
    /// broker still counts it outstanding, and covering it would ack what nobody saw acked.
    fn abandon(&mut self, tag: u64) {
        if let Some(i) = self.position(tag)
            && matches!(self.list[i].slot, Slot::Held | Slot::Finished(..))
        {
            self.list[i].slot = Slot::Abandoned;
            self.note_abandoned(tag);
        }
    }

    fn note_abandoned(&mut self, tag: u64) {
        self.lowest_abandoned = Some(self.lowest_abandoned.map_or(tag, |low| low.min(tag)));
    }

    fn first_finished(&self) -> Option<Arc<Waiter>> {
        match &self.list.front()?.slot {
            Slot::Finished(w, _) => Some(w.clone()),
            _ => None,
        }
    }
}

/// The ack window of one consuming channel (see the module documentation).
pub(crate) struct AckWindow {
    entries: Mutex<Entries<lapin::Acker>>,
    counters: Arc<AckCounters>,
    frames: metrics::Counter,
}

/// A frame on its way: settles its entries and resolves its waiters when done, or (dropped
/// unfinished: the ack future was cancelled) fails them.
struct InFlight<'a> {
    window: &'a AckWindow,
    first: u64,
    count: usize,
    waiters: Vec<Arc<Waiter>>,
    ack: bool,
    done: bool,
}

impl InFlight<'_> {
    fn finish(&mut self, result: &Result<(), BrokerError>) {
        self.done = true;
        let next = self
            .window
            .lock()
            .sent(self.first, self.count, result.is_ok());
        if self.ack && result.is_ok() {
            let c = &self.window.counters;
            c.frames.fetch_add(1, Ordering::Relaxed);
            c.deliveries.fetch_add(self.count as u64, Ordering::Relaxed);
            self.window.frames.increment(1);
        }
        for w in self.waiters.drain(..) {
            w.resolve(result);
        }
        if let Some(w) = next {
            w.wake.notify_one();
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.finish(&Err(BrokerError::ConnectionLost(
                "the ack was abandoned before its frame went out".into(),
            )));
        }
    }
}

impl AckWindow {
    /// An empty window counting its frames in `counters` and the
    /// `fleet_amqp_ack_frames_total` metric.
    pub(crate) fn new(counters: Arc<AckCounters>) -> AckWindow {
        AckWindow {
            entries: Mutex::default(),
            counters,
            frames: metrics::counter!(ACK_FRAMES),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<lapin::Acker>> {
        // The bookkeeping under the lock cannot panic half-way in a way that matters more
        // than a lost ack: keep going rather than poison every later settlement.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a delivery handed out (in tag order).
    pub(crate) fn register(&self, tag: u64) {
        self.lock().register(tag);
    }

    /// Forgets a delivery dropped unsettled (no-op once it was settled).
    pub(crate) fn abandon(&self, tag: u64) {
        self.lock().abandon(tag);
    }

    /// Acks `tag` (`own`: its handle): returns once a frame covering it was written.
    /// `send(None)` sends its own `basic.ack`; `send(Some(last))` a multiple ack ending at
    /// `last`'s tag. Waiting for someone else's frame is bounded by [`COVER_WAIT`] plus
    /// `limit` (the bound of a frame).
    pub(crate) async fn ack<S, F>(
        &self,
        tag: u64,
        own: &lapin::Acker,
        limit: Duration,
        send: S,
    ) -> Result<(), BrokerError>
    where
        S: Fn(Option<lapin::Acker>) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        let step = self.lock().finish(tag, own);
        let w = match step {
            Step::Send(run) => return self.send_run(run, &send).await,
            Step::Alone => return self.send_alone(tag, true, send(None)).await,
            Step::Wait(w) => w,
        };
        let cover_by = Instant::now() + COVER_WAIT;
        // A run that took this entry just before the cover wait ended may take up to `limit`
        // to write its frame; the second COVER_WAIT is slack for the tasks involved.
        let give_up = cover_by + limit + COVER_WAIT;
        let mut late = false;
        loop {
            let until = if late { give_up } else { cover_by };
            let expired = tokio::time::timeout_at(until, w.wake.notified())
                .await
                .is_err();
            if let Some(r) = w.result.get() {
                return r.clone();
            }
            if expired {
                if late {
                    return Err(BrokerError::Timeout(limit));
                }
                late = true;
            }
            let next = self.lock().retake(tag, late);
            match next {
                Some(Step::Send(run)) => return self.send_run(run, &send).await,
                Some(Step::Alone) => return self.send_alone(tag, true, send(None)).await,
                Some(Step::Wait(_)) | None => {}
            }
        }
    }

    /// Settles `tag` on its own with `frame` (a nack, or an ack that must not wait): it
    /// blocks every run until written, and is never covered.
    pub(crate) async fn settle_alone(
        &self,
        tag: u64,
        ack: bool,
        frame: impl Future<Output = Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        self.lock().start_alone(tag);
        self.send_alone(tag, ack, frame).await
    }

    async fn send_alone(
        &self,
        tag: u64,
        ack: bool,
        frame: impl Future<Output = Result<(), BrokerError>>,
    ) -> Result<(), BrokerError> {
        let mut flight = InFlight {
            window: self,
            first: tag,
            count: 1,
            waiters: Vec::new(),
            ack,
            done: false,
        };
        let result = frame.await;
        flight.finish(&result);
        result
    }

    async fn send_run<S, F>(&self, run: Run<lapin::Acker>, send: &S) -> Result<(), BrokerError>
    where
        S: Fn(Option<lapin::Acker>) -> F,
        F: Future<Output = Result<(), BrokerError>>,
    {
        debug_assert_eq!(run.last.is_some(), run.count > 1);
        tracing::trace!(
            first = run.first,
            hi = run.hi,
            count = run.count,
            "amqp: ack frame"
        );
        let mut flight = InFlight {
            window: self,
            first: run.first,
            count: run.count,
            waiters: run.waiters,
            ack: true,
            done: false,
        };
        let result = send(run.last).await;
        flight.finish(&result);
        result
    }
}

/// The metric of ack frames sent, over every subscription.
pub const ACK_FRAMES: &str = "fleet_amqp_ack_frames_total";

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(tags: std::ops::RangeInclusive<u64>) -> Entries<()> {
        let mut e = Entries::default();
        for t in tags {
            e.register(t);
        }
        e
    }

    fn run(step: Step<()>) -> (u64, u64, usize) {
        match step {
            Step::Send(r) => (r.first, r.hi, r.count),
            Step::Alone => panic!("expected a run, got a lone ack"),
            Step::Wait(_) => panic!("expected a run, got a wait"),
        }
    }

    #[test]
    fn the_first_ack_covers_every_finished_entry_after_it() {
        let mut e = registered(1..=5);
        assert!(matches!(e.finish(3, &()), Step::Wait(_)));
        assert!(matches!(e.finish(2, &()), Step::Wait(_)));
        assert!(matches!(e.finish(5, &()), Step::Wait(_)));
        // 4 is held: the run stops before it.
        assert_eq!(run(e.finish(1, &())), (1, 3, 3));
        assert!(e.sent(1, 3, true).is_none(), "4 is held: nobody to wake");
        assert_eq!(e.list.len(), 2);
        assert_eq!(run(e.finish(4, &())), (4, 5, 2));
        assert!(e.sent(4, 2, true).is_none());
        assert!(e.list.is_empty());
    }

    #[test]
    fn a_frame_on_its_way_blocks_the_next_run_then_wakes_it() {
        let mut e = registered(1..=3);
        assert_eq!(run(e.finish(1, &())), (1, 1, 1));
        // 1's frame is not written yet: 2 must wait, or its multiple ack could overtake it.
        assert!(matches!(e.finish(2, &()), Step::Wait(_)));
        assert!(e.sent(1, 1, true).is_some(), "2 is woken to send");
        assert!(matches!(e.retake(2, false), Some(Step::Send(_))));
    }

    #[test]
    fn a_nack_is_never_covered_and_blocks_until_written() {
        let mut e = registered(1..=3);
        e.start_alone(1);
        assert!(matches!(e.finish(2, &()), Step::Wait(_)));
        assert!(e.retake(2, false).is_none());
        let next = e.sent(1, 1, true);
        assert!(next.is_some());
        assert_eq!(run(e.retake(2, false).expect("first now")), (2, 2, 1));
    }

    #[test]
    fn a_late_ack_goes_alone_behind_a_held_entry() {
        let mut e = registered(1..=3);
        assert!(matches!(e.finish(3, &()), Step::Wait(_)));
        assert!(e.retake(3, false).is_none());
        assert!(matches!(e.retake(3, true), Some(Step::Alone)));
        // Being sent, it is not taken into a later run.
        assert!(matches!(e.finish(2, &()), Step::Wait(_)));
        assert!(e.sent(3, 1, true).is_none());
        assert_eq!(e.list.len(), 2);
    }

    #[test]
    fn an_abandoned_entry_is_never_covered_and_acks_above_it_go_alone() {
        let mut e = registered(1..=4);
        e.abandon(2);
        assert!(matches!(e.finish(3, &()), Step::Alone));
        assert_eq!(run(e.finish(1, &())), (1, 1, 1));
        assert!(e.sent(1, 1, true).is_none(), "2 stays first, abandoned");
        assert!(matches!(e.finish(4, &()), Step::Alone));
        // Abandoning a settled entry changes nothing.
        e.abandon(1);
        assert_eq!(e.lowest_abandoned, Some(2));
    }

    #[test]
    fn a_cancelled_wait_is_abandoned_and_not_covered() {
        let mut e = registered(1..=3);
        assert!(matches!(e.finish(2, &()), Step::Wait(_)));
        e.abandon(2);
        assert_eq!(run(e.finish(1, &())), (1, 1, 1));
        assert!(e.sent(1, 1, true).is_none());
        assert!(matches!(e.finish(3, &()), Step::Alone));
    }

    #[test]
    fn a_failed_frame_leaves_its_entries_abandoned() {
        let mut e = registered(1..=3);
        assert!(matches!(e.finish(2, &()), Step::Wait(_)));
        assert_eq!(run(e.finish(1, &())), (1, 2, 2));
        assert!(e.sent(1, 2, false).is_none());
        assert!(matches!(e.finish(3, &()), Step::Alone));
    }
}
