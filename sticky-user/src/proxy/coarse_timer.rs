//! hyper's timer for the proxy's client connections, on a coarse clock.
//!
//! hyper arms its header-read timeout (our keep-alive idle limit) for every request it waits
//! for, and drops it once the head is in. With tokio's timer that is an allocation, an entry
//! put into the timer wheel and taken out again: about 670 instructions per keep-alive
//! request, against about 390 here (callgrind, of the proxy's 22k). Here a waiting deadline
//! is a slot in this thread's table, checked against the clock whenever hyper polls it, and
//! woken by a sweep every [`TICK`]: a timeout fires at most one tick late, never early.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, Weak},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use hyper::rt::{Sleep, Timer};

/// How often waiting deadlines are looked at: how late a timeout may fire.
pub const TICK: Duration = Duration::from_millis(250);

/// The timer given to hyper's connection builder.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoarseTimer;

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(CoarseSleep {
            deadline,
            armed: None,
        })
    }
}

/// A deadline waiting to be woken; `waker` taken once it has been.
struct Waiting {
    deadline: Instant,
    waker: Option<Waker>,
}

/// One thread's waiting deadlines: slots, and the free ones among them.
#[derive(Default)]
struct Table {
    slots: Vec<Option<Waiting>>,
    free: Vec<usize>,
}

impl Table {
    fn insert(&mut self, w: Waiting) -> usize {
        match self.free.pop() {
            Some(key) => {
                if let Some(slot) = self.slots.get_mut(key) {
                    *slot = Some(w);
                }
                key
            }
            None => {
                self.slots.push(Some(w));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.take().is_some()
        {
            self.free.push(key);
        }
    }

    /// Takes the wakers of the deadlines passed at `now`.
    fn due(&mut self, now: Instant, out: &mut Vec<Waker>) {
        for w in self.slots.iter_mut().flatten() {
            if w.deadline <= now
                && let Some(waker) = w.waker.take()
            {
                out.push(waker);
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

type Shared = Arc<Mutex<Table>>;

/// Every thread's table, for the sweeper.
fn tables() -> &'static Mutex<Vec<Weak<Mutex<Table>>>> {
    static TABLES: OnceLock<Mutex<Vec<Weak<Mutex<Table>>>>> = OnceLock::new();
    TABLES.get_or_init(|| {
        // The sweeper lives as long as the process.
        if let Err(e) = std::thread::Builder::new()
            .name("sticky-timeouts".into())
            .spawn(sweep)
        {
            tracing::warn!("proxy: no timeout sweeper ({e}): idle connections stay open");
        }
        Mutex::new(Vec::new())
    })
}

thread_local! {
    static TABLE: Shared = {
        let table = Shared::default();
        if let Ok(mut all) = tables().lock() {
            all.push(Arc::downgrade(&table));
        }
        table
    };
}

/// Wakes the deadlines that have passed, every tick; forgets the tables of ended threads.
fn sweep() {
    let mut wake = Vec::new();
    loop {
        std::thread::sleep(TICK);
        let live: Vec<Shared> = match tables().lock() {
            Ok(mut all) => {
                all.retain(|t| t.strong_count() > 0);
                all.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        let now = Instant::now();
        for table in live {
            if let Ok(mut t) = table.lock() {
                t.due(now, &mut wake);
            }
            // Woken outside the lock: a task may run at once and disarm.
            wake.drain(..).for_each(Waker::wake);
        }
    }
}

/// hyper's view of one deadline: armed (in this thread's table) the first time it is polled
/// before the deadline, disarmed when it is ready or dropped.
struct CoarseSleep {
    deadline: Instant,
    armed: Option<(Shared, usize)>,
}

impl CoarseSleep {
    fn disarm(&mut self) {
        if let Some((table, key)) = self.armed.take()
            && let Ok(mut t) = table.lock()
        {
            t.remove(key);
        }
    }
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.disarm();
            return Poll::Ready(());
        }
        match &this.armed {
            Some((table, key)) => {
                if let Ok(mut t) = table.lock()
                    && let Some(Some(w)) = t.slots.get_mut(*key)
                    && !w
                        .waker
                        .as_ref()
                        .is_some_and(|old| old.will_wake(cx.waker()))
                {
                    w.waker = Some(cx.waker().clone());
                }
            }
            None => {
                let armed = TABLE.with(|table| {
                    let key = table.lock().ok()?.insert(Waiting {
                        deadline: this.deadline,
                        waker: Some(cx.waker().clone()),
                    });
                    Some((table.clone(), key))
                });
                this.armed = armed;
            }
        }
        Poll::Pending
    }
}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl Sleep for CoarseSleep {}

/// Deadlines waiting on this thread.
#[cfg(test)]
fn waiting_here() -> usize {
    TABLE.with(|t| t.lock().map_or(0, |t| t.waiting()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_after_its_deadline_within_a_tick() {
        let start = Instant::now();
        CoarseTimer.sleep(Duration::from_millis(100)).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100), "early: {took:?}");
        // A tick, and room for a loaded machine.
        assert!(
            took < Duration::from_millis(100) + 4 * TICK,
            "late: {took:?}"
        );
        assert_eq!(waiting_here(), 0, "a fired deadline left its slot");
    }

    #[tokio::test]
    async fn a_passed_deadline_is_ready_at_once_and_a_dropped_one_frees_its_slot() {
        let before = waiting_here();
        CoarseTimer.sleep_until(Instant::now()).await;
        let mut pending = CoarseTimer.sleep(Duration::from_secs(60));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(pending.as_mut().poll(&mut cx).is_pending());
        assert!(pending.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            waiting_here(),
            before + 1,
            "armed once, however often polled"
        );
        drop(pending);
        assert_eq!(waiting_here(), before);
    }

    #[test]
    fn table_reuses_freed_slots() {
        let mut t = Table::default();
        let w = || Waiting {
            deadline: Instant::now(),
            waker: None,
        };
        let (a, b) = (t.insert(w()), t.insert(w()));
        t.remove(a);
        t.remove(a);
        assert_eq!((t.waiting(), t.insert(w())), (1, a));
        t.remove(b);
        assert_eq!(t.waiting(), 1);
        assert_eq!(t.slots.len(), 2);
    }
}
