//! One worker: takes an item through the pool's call to its outcome, and
//! reports every attempt and the outcome as events.

use super::{unsent, Budget, Event, Faults};
use crate::job::{id_hash, Item};
use crate::pool::{Attempt, CallError, Pool, RetryPolicy, Unavailable};
use crate::price::{self, Price};
use crate::provider::{ApiError, ErrorClass, Reply, Request, Usage};
use crate::store::{AttemptClass, AttemptRow, ItemRow, ItemStatus, Reservation};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A worker's fixed context.
pub(super) struct Worker {
    pub(super) pool: Arc<Pool>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) default_model: String,
    pub(super) policy: RetryPolicy,
    pub(super) budget: Option<Arc<Budget>>,
    pub(super) budget_output_cap: u32,
    /// Cancelled when the run stops dispatching (Ctrl-C, the budget, a
    /// fatal failure): nothing more is sent, retries included.
    pub(super) stop: CancellationToken,
    /// Requests earlier invocations of a resumed run sent per pending item
    /// (by [`id_hash`]), so attempt numbers go on from there.
    pub(super) prior_attempts: Arc<HashMap<u64, u32>>,
    /// Where a failure that must stop the run is told.
    pub(super) faults: Arc<Faults>,
}

/// An estimate of a text's tokens, for admission before sending: about four
/// characters per token for ASCII, one per other character (CJK).
fn estimate_tokens(text: &str) -> u64 {
    let ascii = text.chars().filter(char::is_ascii).count() as u64;
    let other = text.chars().count() as u64 - ascii;
    (ascii.div_ceil(4) + other).max(1)
}

impl Worker {
    /// Runs `item` to its end, or leaves it pending if the budget cannot
    /// cover its worst case.
    pub(super) async fn process(&self, item: Item) {
        // Only tests can reach this: it proves a panicking worker loses no
        // item silently.
        #[cfg(test)]
        if item.prompt.contains("[[test:panic]]") {
            panic!("a test asked for a panic");
        }
        let prior = match self.prior_attempts.is_empty() {
            true => 0,
            false => self
                .prior_attempts
                .get(&id_hash(&item.id))
                .copied()
                .unwrap_or(0),
        };
        let model = item.model.as_deref().unwrap_or(&self.default_model);
        let tokens =
            estimate_tokens(&item.prompt) + item.system.as_deref().map_or(0, estimate_tokens);
        let price = price::lookup(model);
        // Under a budget every request carries an output cap, so its worst
        // case is known before it is sent.
        let max_output_tokens = match &self.budget {
            Some(_) => Some(item.max_output_tokens.unwrap_or(self.budget_output_cap)),
            None => item.max_output_tokens,
        };
        let worst = price.map_or(0.0, |p| {
            p.cost(&Usage {
                input_tokens: tokens,
                output_tokens: u64::from(max_output_tokens.unwrap_or(0)),
                ..Usage::default()
            })
        });
        if let Some(budget) = &self.budget {
            if price.is_none() {
                let outcome = ItemRow {
                    error: Some(format!(
                        "no price is known for model {model}, so it cannot be sent under --max-cost"
                    )),
                    ..unsent(item.id.clone(), item.line, ItemStatus::Failed, Some(model))
                };
                let _ = self.events.send(Event::Finished(outcome));
                return;
            }
            if !budget.reserve(worst) {
                self.stop.cancel();
                return;
            }
        }
        let request = Request {
            model,
            prompt: &item.prompt,
            system: item.system.as_deref(),
            max_output_tokens,
            temperature: item.temperature,
        };
        let mut last: Option<AttemptRow> = None;
        // The quota day the attempt was reserved against, for its settlement.
        let day = std::sync::Mutex::new(String::new());
        let mut cost = 0.0;
        let result = self
            .pool
            .call(
                model,
                tokens,
                &self.policy,
                &self.stop,
                |slot| {
                    let request = request.clone();
                    let day = &day;
                    async move {
                        let reserved = self.reserve(&slot.account, model).await?;
                        *day.lock().unwrap_or_else(|e| e.into_inner()) = reserved;
                        slot.client.generate(&slot.key, &request).await
                    }
                },
                |attempt, reply| {
                    let day = day.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let mut row = attempt_row(&item.id, model, price, attempt, reply, day);
                    row.attempt = row.attempt.saturating_add(prior);
                    cost += row.cost_usd;
                    // Sent at once, so the ledger learns of every request
                    // even if the run dies before the item is finished.
                    let _ = self.events.send(Event::Attempt(row.clone()));
                    last = Some(row);
                },
            )
            .await;
        let mut outcome = ItemRow {
            status: ItemStatus::Ok,
            input_tokens: last.as_ref().map_or(0, |a| a.input_tokens),
            output_tokens: last.as_ref().map_or(0, |a| a.output_tokens),
            latency_ms: last.as_ref().map_or(0, |a| a.latency_ms),
            attempts: last.as_ref().map_or(prior, |a| a.attempt),
            key: last.as_ref().map(|a| a.key.clone()),
            account: last.as_ref().map(|a| a.account.clone()),
            cost_usd: cost,
            ..unsent(item.id.clone(), item.line, ItemStatus::Ok, Some(model))
        };
        match result {
            Ok(reply) => outcome.output = Some(reply.text),
            Err(CallError::Unavailable(unavailable)) => {
                outcome.status = match unavailable {
                    Unavailable::DayExhausted { .. } | Unavailable::ServerDelay { .. } => {
                        ItemStatus::Deferred
                    }
                    _ => ItemStatus::Failed,
                };
                outcome.error = Some(unavailable.to_string());
            }
            Err(CallError::Api(error)) => {
                outcome.status = match &error.class {
                    ErrorClass::Blocked { .. } => ItemStatus::Blocked,
                    _ => ItemStatus::Failed,
                };
                outcome.error = Some(match &error.class {
                    ErrorClass::Blocked { reason } => format!("{reason}: {}", error.message),
                    _ => error.message,
                });
            }
            // Not finished: the item stays pending for the next run.
            Err(CallError::Stopped) => {
                self.release_budget(worst, cost);
                return;
            }
            Err(error @ CallError::Unreachable(_)) => {
                self.faults.push(error.to_string());
                self.stop.cancel();
                self.release_budget(worst, cost);
                return;
            }
        }
        self.release_budget(worst, outcome.cost_usd);
        // The recorder only goes away when the run is being torn down; the
        // outcome then stays unrecorded and the item pending.
        let _ = self.events.send(Event::Finished(outcome));
    }

    /// Replaces the item's budget reservation of `worst` by what it cost.
    fn release_budget(&self, worst: f64, cost: f64) {
        if let Some(budget) = &self.budget {
            budget.settle(worst, cost);
        }
    }

    /// Counts a request in the ledger before it is sent, so a run killed
    /// while the request is in flight has still counted it. Returns the
    /// Pacific day it was counted against.
    async fn reserve(&self, account: &str, model: &str) -> Result<String, ApiError> {
        let day = crate::types::QuotaDay::today().to_string();
        let (committed, done) = oneshot::channel();
        let reservation = Reservation {
            account: account.to_owned(),
            model: model.to_owned(),
            day: day.clone(),
        };
        let sent = self.events.send(Event::Reserve {
            reservation,
            committed,
        });
        match (sent, done.await) {
            (Ok(()), Ok(())) => Ok(day),
            // Nothing is sent whose use could not be recorded.
            _ => Err(ApiError {
                class: ErrorClass::ItemInvalid,
                status: None,
                message: "the state file is unavailable; the request was not sent".to_owned(),
            }),
        }
    }
}

fn attempt_row(
    item: &str,
    model: &str,
    price: Option<Price>,
    attempt: &Attempt<'_>,
    reply: Option<&Reply>,
    day: String,
) -> AttemptRow {
    let usage = reply.map(|r| r.usage).unwrap_or_default();
    let now = chrono::Utc::now();
    AttemptRow {
        item_id: item.to_owned(),
        attempt: attempt.number,
        key: attempt.key.fingerprint().to_owned(),
        account: attempt.account.to_owned(),
        model: model.to_owned(),
        class: AttemptClass::of(attempt.error.map(|e| &e.class)),
        http_status: match attempt.error {
            None => Some(200),
            Some(e) => e.status,
        },
        latency_ms: attempt.latency.as_millis() as u64,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_usd: price.map_or(0.0, |p| p.cost(&usage)),
        error: attempt.error.map(|e| e.message.clone()),
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_estimates_count_cjk_characters_one_each() {
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcdefgh!"), 3);
        assert_eq!(estimate_tokens("机器学习"), 4);
        assert_eq!(estimate_tokens(""), 1);
    }
}
