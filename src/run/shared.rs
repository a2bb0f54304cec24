//! A run's link to the shared state in PostgreSQL (`--state postgres://…`):
//! one thread owns the connection and serves the run's workers over a
//! channel, as the recorder thread serves the local store.
//!
//! - **The gate.** Each request is admitted here before it is sent: first a
//!   unit of its account's minute, from a slice this host holds (a new slice
//!   is taken from the database when the held one is used up or expired;
//!   with no room in the minute, the request waits until a share comes free),
//!   then the day's ledger. Requests that arrive together are reserved
//!   together: one round trip per (account, model, day) when they all fit.
//! - **Loss.** When the database fails, every waiting and later reservation
//!   is refused: dispatch stops and nothing is sent that was not reserved.
//!   The thread says so once, through `lost`.

use crate::store::postgres::{PgState, Slice};
use crate::store::{QuotaLedger, Reservation, Reserved};
use crate::types::Limits;
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a minute slice may be used before what is left goes back.
const SLICE_TTL: Duration = Duration::from_secs(5);

/// What the run asks of the shared state.
enum Command {
    /// Admit one request (minute, then day).
    Reserve {
        reservation: Reservation,
        minute: Limits,
        reply: oneshot::Sender<Option<Reserved>>,
    },
    /// Give back a request the server did not count.
    Release(Reservation),
}

/// The run's handle on the shared-state thread. Dropping it ends the
/// thread, which gives back what its slices did not use.
#[derive(Debug)]
pub(crate) struct SharedGate {
    commands: mpsc::Sender<Command>,
}

impl SharedGate {
    /// Starts the thread that owns `state`. `lost` is called once, with the
    /// error, if the database fails.
    pub(crate) fn spawn(
        state: PgState,
        lost: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<SharedGate> {
        let (commands, inbox) = mpsc::channel();
        std::thread::Builder::new()
            .name("keyfan-shared".into())
            .spawn(move || Server::new(state).serve(&inbox, lost))?;
        Ok(SharedGate { commands })
    }

    /// Admits one request: `None` when the shared state is gone (nothing may
    /// be sent).
    pub(crate) async fn reserve(
        &self,
        reservation: Reservation,
        minute: Limits,
    ) -> Option<Reserved> {
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

/// A slice of an account's minute that this host holds.
struct Held {
    slice: Slice,
    used: u64,
    until: Instant,
}

/// A request waiting for its minute.
struct Waiting {
    reservation: Reservation,
    minute: Limits,
    reply: oneshot::Sender<Option<Reserved>>,
}

struct Server {
    state: PgState,
    slices: HashMap<(String, String), Held>,
    /// Requests with no room in their minute, and when to ask again.
    waiting: VecDeque<Waiting>,
    retry_at: HashMap<(String, String), Instant>,
}

impl Server {
    fn new(state: PgState) -> Server {
        Server {
            state,
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
                }
            }
            let step = self
                .state
                .release(&releases)
                .map_err(|e| e.to_string())
                .and_then(|()| self.admit().map_err(|e| e.to_string()));
            if let Err(error) = step {
                // Every request waiting, and every later one, is refused.
                for waiting in self.waiting.drain(..) {
                    let _ = waiting.reply.send(None);
                }
                if let Some(lost) = lost.take() {
                    lost(error);
                }
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

    /// Admits every waiting request that has a unit of its minute, then
    /// reserves their day together.
    fn admit(&mut self) -> Result<(), crate::store::StoreError> {
        let now = Instant::now();
        self.expire(now)?;
        self.retry_at.retain(|_, at| *at > now);
        let mut admitted = Vec::new();
        let mut still = VecDeque::new();
        while let Some(waiting) = self.waiting.pop_front() {
            let key = (
                waiting.reservation.account.clone(),
                waiting.reservation.model.clone(),
            );
            if self.minute_unit(&key, waiting.minute, now)? {
                admitted.push(waiting);
            } else {
                still.push_back(waiting);
            }
        }
        self.waiting = still;
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
            let _ = waiting.reply.send(Some(verdict));
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
                return Ok(true);
            }
        }
        if self.retry_at.contains_key(key) {
            return Ok(false);
        }
        // A used-up slice ends now: it counts no longer than it was used.
        if let Some(held) = self.slices.remove(key) {
            self.state.give_back(held.slice.id, held.used, 0)?;
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
                self.slices.insert(
                    key.clone(),
                    Held {
                        until,
                        slice,
                        used: 1,
                    },
                );
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

    /// At the end of the run: every slice's unused part goes back.
    fn give_back_all(&mut self) {
        for (_, held) in self.slices.drain() {
            let _ = self.state.give_back(held.slice.id, held.used, 0);
        }
    }
}
