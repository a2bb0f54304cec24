//! A run's link to the shared state in PostgreSQL (`--state postgres://…`):
//! one thread owns the connection and serves the run's workers over a
//! channel, as the recorder thread serves the local store.
//!
//! - **The gate.** Each request is admitted here before it is sent: first a
//!   unit of its account's minute, from a slice this host holds (a new slice
//!   is taken from the database when the held one is used up or expired;
//!   with no room in the minute, the caller is told how long until a share
//!   comes free, and its pool leases another account or waits), then the
//!   day's ledger. Requests that arrive together are reserved
//!   together: one round trip per (account, model, day) when they all fit.
//! - **The queue.** The job's run is a row with a heartbeat, and its items
//!   a queue ([`crate::store::postgres::queue`]): the feeder claims chunks
//!   here, each finished item is ended here with its results line (through
//!   [`Finisher`], the observer that sees it once committed locally), and
//!   the thread renews this host's claims every third of the lease. When
//!   the run ends, claims not finished go back to pending, and the last
//!   host out marks the run done.
//! - **Learned limits.** A limit a 429 states is written to the shared
//!   state; with each heartbeat (and at the start) the limits every host
//!   learned are given to this host's pool.
//! - **Loss.** When the database fails, every waiting and later reservation
//!   is refused: dispatch stops and nothing is sent that was not reserved.
//!   The thread says so once, through `lost`.

use super::{Notice, Observer, Progress, RunOutcome};
use crate::pool::Pool;
use crate::store::postgres::{ClaimedItem, PgState, Slice};
use crate::store::{AttemptRow, ItemRow, ItemStatus, QuotaLedger, Reservation, Reserved};
use crate::types::{Limits, QuotaScope};
use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a minute slice may be used before what is left goes back.
const SLICE_TTL: Duration = Duration::from_secs(3);

/// What the run asks of the shared state.
enum Command {
    /// Admit one request (minute, then day).
    Reserve {
        reservation: Reservation,
        minute: Limits,
        reply: oneshot::Sender<Option<Admission>>,
    },
    /// Give back a request the server did not count.
    Release(Reservation),
    /// Claim up to `n` items; an empty claim says whether any is still
    /// open (held by another host).
    Claim {
        n: u64,
        reply: oneshot::Sender<Option<Claimed>>,
    },
    /// Share a limit a 429 stated.
    Learn {
        account: String,
        model: String,
        limits: Limits,
    },
    /// End a claimed item with its results line and outcome.
    Finish {
        line: u64,
        result: String,
        outcome: &'static str,
    },
}

/// What the gate said to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The day's ledger's answer (the minute had room).
    Now(Reserved),
    /// The account's minute has no room before this long: lease another
    /// account meanwhile, or wait.
    Later(Duration),
}

/// What a claim got.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// The items now this host's, in job order.
    pub(crate) items: Vec<ClaimedItem>,
    /// Items of the run not finished yet, this claim's included.
    pub(crate) open: u64,
}

/// The run in the shared state: its queue, and how long a claim lasts.
#[derive(Debug)]
pub(crate) struct Link {
    /// The connection, migrated.
    pub(crate) state: PgState,
    /// The run's row.
    pub(crate) run: i64,
    /// How long a claim lasts unless renewed.
    pub(crate) lease: Duration,
}

/// The run's handle on the shared-state thread. Dropping it ends the
/// thread, which gives back what its slices did not use.
#[derive(Debug, Clone)]
pub(crate) struct SharedGate {
    commands: mpsc::Sender<Command>,
}

impl SharedGate {
    /// Starts the thread that owns `state`. `lost` is called once, with the
    /// error, if the database fails.
    /// The limits every host has learned are given to `pool` at the start
    /// and with every heartbeat. The thread ends, its last items finished
    /// and its claims given back, once every handle is dropped: joining it
    /// then waits for that.
    pub(crate) fn spawn(
        link: Link,
        pool: Arc<Pool>,
        lost: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<(SharedGate, std::thread::JoinHandle<()>)> {
        let (commands, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("keyfan-shared".into())
            .spawn(move || Server::new(link, pool).serve(&inbox, lost))?;
        Ok((SharedGate { commands }, thread))
    }

    /// Shares what a 429 said of `account`'s limit for `model` (`limit` of
    /// the quota `scope`) with every host.
    pub(crate) fn learn(&self, account: &str, model: &str, scope: QuotaScope, limit: u64) {
        let narrow = || Some(u32::try_from(limit).unwrap_or(u32::MAX));
        let limits = match scope {
            QuotaScope::MinuteRequests => Limits {
                rpm: narrow(),
                ..Limits::default()
            },
            QuotaScope::MinuteTokens => Limits {
                tpm: Some(limit),
                ..Limits::default()
            },
            QuotaScope::MinuteOutputTokens => Limits {
                otpm: Some(limit),
                ..Limits::default()
            },
            QuotaScope::Day => Limits {
                rpd: narrow(),
                ..Limits::default()
            },
            QuotaScope::Unknown => return,
        };
        let _ = self.commands.send(Command::Learn {
            account: account.to_owned(),
            model: model.to_owned(),
            limits,
        });
    }

    /// Claims up to `n` items, blocking (the feeder's thread): `None` when
    /// the shared state is gone.
    pub(crate) fn claim(&self, n: u64) -> Option<Claimed> {
        let (reply, claimed) = oneshot::channel();
        self.commands.send(Command::Claim { n, reply }).ok()?;
        claimed.blocking_recv().ok().flatten()
    }

    /// Admits one request: `None` when the shared state is gone (nothing may
    /// be sent).
    pub(crate) async fn reserve(
        &self,
        reservation: Reservation,
        minute: Limits,
    ) -> Option<Admission> {
        let (reply, verdict) = oneshot::channel();
        self.commands
            .send(Command::Reserve {
                reservation,
                minute,
                reply,
            })
            .ok()?;
        verdict.await.ok().flatten()
    }

    /// Gives back a request the server did not count.
    pub(crate) fn release(&self, reservation: Reservation) {
        let _ = self.commands.send(Command::Release(reservation));
    }
}

/// The run's observer, and the queue told of each item once it is
/// committed locally: a deferred item ends too (a later run of the job
/// takes it up again).
pub(crate) struct Finisher {
    inner: Box<dyn Observer>,
    commands: mpsc::Sender<Command>,
}

impl Finisher {
    /// `inner`, with every finished item also ended in the queue of `gate`.
    pub(crate) fn new(inner: Box<dyn Observer>, gate: &SharedGate) -> Finisher {
        Finisher {
            inner,
            commands: gate.commands.clone(),
        }
    }
}

impl Observer for Finisher {
    fn attempt(&mut self, attempt: &AttemptRow) {
        self.inner.attempt(attempt);
    }

    fn finished(&mut self, item: &ItemRow) {
        // A skipped line has no item in the queue.
        if item.status != ItemStatus::Skipped {
            if let Ok(result) = serde_json::to_string(item) {
                let _ = self.commands.send(Command::Finish {
                    line: item.line,
                    result,
                    outcome: item.status.as_str(),
                });
            }
        }
        self.inner.finished(item);
    }

    fn progress(&mut self, progress: &Progress) {
        self.inner.progress(progress);
    }

    fn notice(&mut self, notice: &Notice) {
        self.inner.notice(notice);
    }

    fn done(&mut self, outcome: &RunOutcome) {
        self.inner.done(outcome);
    }
}

/// A slice of an account's minute that this host holds.
struct Held {
    slice: Slice,
    used: u64,
    until: Instant,
}

/// A request to admit.
struct Waiting {
    reservation: Reservation,
    minute: Limits,
    reply: oneshot::Sender<Option<Admission>>,
}

struct Server {
    state: PgState,
    pool: Arc<Pool>,
    run: i64,
    lease: Duration,
    heartbeat_at: Instant,
    slices: HashMap<(String, String), Held>,
    /// Requests received, to admit together.
    waiting: VecDeque<Waiting>,
    /// Minutes with no room, and when to ask the database again.
    retry_at: HashMap<(String, String), Instant>,
}

impl Server {
    fn new(link: Link, pool: Arc<Pool>) -> Server {
        Server {
            state: link.state,
            pool,
            run: link.run,
            lease: link.lease,
            // The first at once: it reads the limits hosts learned.
            heartbeat_at: Instant::now(),
            slices: HashMap::new(),
            waiting: VecDeque::new(),
            retry_at: HashMap::new(),
        }
    }

    fn serve(mut self, inbox: &mpsc::Receiver<Command>, lost: impl FnOnce(String)) {
        let mut lost = Some(lost);
        loop {
            let wake = self
                .retry_at
                .values()
                .chain(self.slices.values().map(|h| &h.until))
                .chain([&self.heartbeat_at])
                .min()
                .copied();
            let first = match wake {
                Some(at) => {
                    match inbox.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(command) => Some(command),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match inbox.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                },
            };
            let mut releases = Vec::new();
            let mut work = Vec::new();
            for command in first.into_iter().chain(inbox.try_iter()) {
                match command {
                    Command::Reserve {
                        reservation,
                        minute,
                        reply,
                    } => self.waiting.push_back(Waiting {
                        reservation,
                        minute,
                        reply,
                    }),
                    Command::Release(reservation) => releases.push(reservation),
                    other => work.push(other),
                }
            }
            let step = self
                .state
                .release(&releases)
                .map_err(|e| e.to_string())
                .and_then(|()| self.admit().map_err(|e| e.to_string()))
                .and_then(|()| self.queue(work).map_err(|e| e.to_string()));
            if let Err(error) = step {
                // Every request waiting, and every later one, is refused.
                for waiting in self.waiting.drain(..) {
                    let _ = waiting.reply.send(None);
                }
                if let Some(lost) = lost.take() {
                    lost(error);
                }
                // Dropping each command answers its sender with nothing.
                for command in inbox.iter() {
                    if let Command::Reserve { reply, .. } = command {
                        let _ = reply.send(None);
                    }
                }
                return;
            }
        }
        self.give_back_all();
    }

    /// Claims, finishes and the heartbeat.
    fn queue(&mut self, work: Vec<Command>) -> Result<(), crate::store::postgres::PgError> {
        for command in work {
            match command {
                Command::Claim { n, reply } => {
                    let items = self.state.claim(self.run, n, self.lease)?;
                    let open = self.state.open_items(self.run)?;
                    let _ = reply.send(Some(Claimed { items, open }));
                }
                Command::Finish {
                    line,
                    result,
                    outcome,
                } => {
                    // `false`: this host's claim lapsed and another host
                    // took the item; it ends there.
                    self.state.finish(self.run, line, &result, outcome)?;
                }
                Command::Learn {
                    account,
                    model,
                    limits,
                } => self.state.learn(&account, &model, limits)?,
                Command::Reserve { .. } | Command::Release(_) => {}
            }
        }
        if Instant::now() >= self.heartbeat_at {
            self.state.heartbeat(self.run, self.lease)?;
            for (account, model, limits) in self.state.learned()? {
                self.pool.adopt(&account, &model, limits);
            }
            self.heartbeat_at = Instant::now() + self.lease / 3;
        }
        Ok(())
    }

    /// Admits every waiting request that has a unit of its minute, then
    /// reserves their day together.
    fn admit(&mut self) -> Result<(), crate::store::StoreError> {
        let now = Instant::now();
        self.expire(now)?;
        self.retry_at.retain(|_, at| *at > now);
        let mut admitted = Vec::new();
        while let Some(waiting) = self.waiting.pop_front() {
            let key = (
                waiting.reservation.account.clone(),
                waiting.reservation.model.clone(),
            );
            if self.minute_unit(&key, waiting.minute, now)? {
                admitted.push(waiting);
            } else {
                // The pool leases another account meanwhile, or waits.
                let at = self.retry_at.get(&key).copied().unwrap_or(now);
                let later = Admission::Later(at.saturating_duration_since(now));
                let _ = waiting.reply.send(Some(later));
            }
        }
        if admitted.is_empty() {
            return Ok(());
        }
        let reservations: Vec<Reservation> =
            admitted.iter().map(|w| w.reservation.clone()).collect();
        let verdicts = self.state.reserve(&reservations)?;
        for (waiting, verdict) in admitted.into_iter().zip(verdicts) {
            if verdict != Reserved::Reserved {
                // Not sent: its minute unit stays free for the next request.
                let key = (waiting.reservation.account, waiting.reservation.model);
                if let Some(held) = self.slices.get_mut(&key) {
                    held.used = held.used.saturating_sub(1);
                }
            }
            let _ = waiting.reply.send(Some(Admission::Now(verdict)));
        }
        Ok(())
    }

    /// Takes one request's unit of `key`'s minute: from the held slice, or a
    /// new one. `false` when the minute has no room now.
    fn minute_unit(
        &mut self,
        key: &(String, String),
        limits: Limits,
        now: Instant,
    ) -> Result<bool, crate::store::StoreError> {
        let Some(rpm) = limits.rpm else {
            return Ok(true);
        };
        if let Some(held) = self.slices.get_mut(key) {
            if held.used < held.slice.requests {
                held.used += 1;
                // Used up: it ends now, so it counts no longer than it must.
                if held.used == held.slice.requests {
                    let (id, used) = (held.slice.id, held.used);
                    self.slices.remove(key);
                    self.state.give_back(id, used, 0)?;
                }
                return Ok(true);
            }
        }
        if self.retry_at.contains_key(key) {
            return Ok(false);
        }
        // A tenth of the minute at a time: small enough that hosts share
        // it, large enough that the database is asked rarely.
        let want = (u64::from(rpm) / 10).max(1);
        let minute = Limits {
            rpm: Some(rpm),
            ..Limits::default()
        };
        match self
            .state
            .take_slice(&key.0, &key.1, minute, want, 0, SLICE_TTL)?
        {
            Ok(slice) => {
                // Nothing is admitted in its last second: what was admitted
                // is sent before the database stops counting the slice live.
                let until = now + slice.valid_for.saturating_sub(Duration::from_secs(1));
                if slice.requests == 1 {
                    // Used up by this request: it ends now.
                    self.state.give_back(slice.id, 1, 0)?;
                } else {
                    let held = Held {
                        until,
                        slice,
                        used: 1,
                    };
                    self.slices.insert(key.clone(), held);
                }
                Ok(true)
            }
            Err(refused) => {
                self.retry_at.insert(
                    key.clone(),
                    now + refused.retry_in.max(Duration::from_millis(20)),
                );
                Ok(false)
            }
        }
    }

    /// Gives back what is left of every slice that expired.
    fn expire(&mut self, now: Instant) -> Result<(), crate::store::StoreError> {
        let expired: Vec<_> = self
            .slices
            .iter()
            .filter(|(_, held)| held.until <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            if let Some(held) = self.slices.remove(&key) {
                self.state.give_back(held.slice.id, held.used, 0)?;
            }
        }
        Ok(())
    }

    /// At the end of the run: every slice's unused part goes back, claims
    /// not finished go back to pending, and the last host out closes the
    /// run. Failures here lose nothing: slices and claims lapse by
    /// themselves.
    fn give_back_all(&mut self) {
        for (_, held) in self.slices.drain() {
            let _ = self.state.give_back(held.slice.id, held.used, 0);
        }
        let _ = self.state.unclaim(self.run);
        let _ = self.state.close_run(self.run);
    }
}
