//! One worker: takes an item through the attempt loop ([`Caller::call`])
//! to its outcome, and reports every attempt and the outcome as events.

use super::budget::Fits;
use super::call::{refused_reason, Attempt, CallError, Caller};
use super::deps::Tracker;
use super::media::Uploads;
use super::{Budget, Event, Faults, Notice};
use crate::estimate::item_tokens;
use crate::job::{id_hash, Item};
use crate::pool::{Need, Unavailable};
use crate::price::{Price, PriceTable};
use crate::provider::{ApiError, Billed, ErrorClass, RawRequest, Request, Usage};
use crate::store::{AttemptClass, AttemptRow, ItemRow, ItemStatus};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A worker's fixed context.
pub(super) struct Worker {
    pub(super) caller: Arc<Caller>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) default_model: String,
    pub(super) budget: Option<Arc<Budget>>,
    pub(super) default_output_cap: Option<u32>,
    /// The prices of the models.
    pub(super) prices: Arc<PriceTable>,
    /// Cancelled when the run stops dispatching (Ctrl-C, the budget, a
    /// fatal failure): nothing more is sent, retries included.
    pub(super) stop: CancellationToken,
    /// Requests earlier invocations of a resumed run sent per pending item
    /// (by [`id_hash`]), so attempt numbers go on from there.
    pub(super) prior_attempts: Arc<HashMap<u64, u32>>,
    /// Where a failure that must stop the run is told.
    pub(super) faults: Arc<Faults>,
    /// The run's media uploads, shared by every worker.
    pub(super) media: Arc<Uploads>,
    /// Told when an item ends, to release the items waiting for it; `None`
    /// for a job without dependencies.
    pub(super) deps: Option<Arc<Tracker>>,
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
        // A name of the config's `models` map goes out as the model it names.
        let wire_model = self.caller.pool().model_name(model);
        let tokens = item_tokens(&item, wire_model);
        let price = self.prices.price(wire_model);
        // Under a budget (or `max_cost_per_item`) every request carries an
        // output cap, so its worst case is known before it is sent.
        let max_output_tokens = item.max_output_tokens.or(self.default_output_cap);
        let worst = price.map_or(0.0, |p| {
            p.cost(&Usage {
                input_tokens: tokens,
                output_tokens: u64::from(max_output_tokens.unwrap_or(0)),
                ..Usage::default()
            })
        });
        if self.budget.is_some() && price.is_none() {
            return self.fail_unsent(
                &item,
                model,
                format!(
                    "no price is known for model {model}, so it cannot be sent under --max-cost"
                ),
            );
        }
        // Media files are read (small ones) or hashed (the rest) first; a
        // file gone since validation fails its item unsent.
        let slots = match self.media.prepare(&item).await {
            Ok(slots) => slots,
            Err(error) => return self.fail_unsent(&item, model, error),
        };
        if !self.reserve(worst) {
            return;
        }
        let mut need = Need::new(model, tokens).with_output_cap(max_output_tokens);
        if let Some(account) = self.media.pin(&slots) {
            need = need.pinned(account);
        }
        let request = Request {
            model: wire_model,
            prompt: &item.prompt,
            system: item.system.as_deref(),
            max_output_tokens,
            temperature: item.temperature,
            turns: &item.turns,
            generation: &item.generation,
            media: &[],
        };
        let (slots, media, raw) = (&slots, &self.media, item.raw.as_ref());
        let schema = item.generation.response_schema.as_deref();
        let mut schema_tries = item
            .schema_retries
            .unwrap_or(crate::job::DEFAULT_SCHEMA_RETRIES);
        let mut last: Option<AttemptRow> = None;
        let mut billed = Billed::default();
        let mut cost = 0.0;
        // What the budget holds for the item: its worst case, once more for
        // each billed answer that may be tried again.
        let mut reserved = worst;
        // An answer that does not fit the item's schema is asked for again,
        // `schema_retries` times (each a billed answer, so reserved again),
        // its attempts numbered on.
        let (result, answer) = loop {
            let offset = last.as_ref().map_or(prior, |a| a.attempt);
            let mut answer = None;
            let result = self
                .caller
                .call(
                    need,
                    &self.stop,
                    |client, key| {
                        let request = request.clone();
                        async move {
                            // A batch file's body goes as it is.
                            if let Some(body) = raw {
                                let request = RawRequest {
                                    model: request.model,
                                    body,
                                    max_output_tokens: request.max_output_tokens,
                                };
                                return client.generate_raw(&key, &request).await;
                            }
                            if slots.is_empty() {
                                return client.generate(&key, &request).await;
                            }
                            // Uploads (once per file and account) go with the
                            // leased key: only its account can see them.
                            media.generate(slots, &client, &key, &request).await
                        }
                    },
                    |attempt, reply| {
                        // What the API billed: an answer, or a 200 without one.
                        billed = match reply {
                            Some(reply) => Billed {
                                usage: reply.usage,
                                finish_reason: reply.finish_reason.clone(),
                            },
                            None => attempt
                                .error
                                .and_then(|e| e.billed.as_deref())
                                .cloned()
                                .unwrap_or_default(),
                        };
                        let mut row = attempt_row(&item.id, model, price, attempt, &billed.usage);
                        row.attempt = row.attempt.saturating_add(offset);
                        cost += row.cost_usd.unwrap_or(0.0);
                        // Told with the reason the pool disables the key by.
                        if let Some(reason) = attempt.error.and_then(refused_reason) {
                            let _ = self.events.send(Event::Notice(Notice::KeyDisabled {
                                key: row.key.clone(),
                                account: row.account.clone(),
                                reason,
                            }));
                        }
                        if let (Some(schema), Some(reply)) = (schema, reply) {
                            let parsed =
                                crate::schema::parse_answer(schema, &reply.text).map_err(|e| {
                                    format!("the answer does not fit response_schema: {e}")
                                });
                            if let Err(mismatch) = &parsed {
                                row.class = AttemptClass::SchemaMismatch;
                                row.error = Some(mismatch.clone());
                            }
                            answer = Some(parsed);
                        }
                        // A billed empty answer is tried again: the next answer
                        // needs a reservation of its own, or is not sent.
                        let again = matches!(
                            attempt.error.map(|e| &e.class),
                            Some(ErrorClass::EmptyAnswer)
                        );
                        if again && row.cost_usd.is_some_and(|c| c > 0.0) && self.reserve(worst) {
                            reserved += worst;
                        }
                        // Sent at once, so the store learns of every request
                        // even if the run dies before the item is finished.
                        let _ = self.events.send(Event::Attempt(row.clone()));
                        last = Some(row);
                    },
                )
                .await;
            // The account holding the item's files cannot serve it:
            // `media.on_unavailable` says whether it goes elsewhere.
            if let (Err(CallError::Unavailable(why)), Some(account)) = (&result, need.pin) {
                let cannot_serve = matches!(
                    why,
                    Unavailable::DayExhausted { .. } | Unavailable::NoKey { .. }
                );
                if cannot_serve && self.media.unavailable(account, &why.to_string()) {
                    need.pin = self.media.pin(slots);
                    continue;
                }
            }
            match answer {
                Some(Err(_)) if result.is_ok() && schema_tries > 0 && self.reserve(worst) => {
                    schema_tries -= 1;
                    reserved += worst;
                }
                answer => break (result, answer),
            }
        };
        let mut outcome = ItemRow {
            status: ItemStatus::Ok,
            input_tokens: last.as_ref().map_or(0, |a| a.input_tokens),
            output_tokens: last.as_ref().map_or(0, |a| a.output_tokens),
            latency_ms: last.as_ref().map_or(0, |a| a.latency_ms),
            attempts: last.as_ref().map_or(prior, |a| a.attempt),
            key: last.as_ref().map(|a| a.key.clone()),
            account: last.as_ref().map(|a| a.account.clone()),
            thinking_tokens: billed.usage.thinking_tokens,
            cached_tokens: billed.usage.cached_tokens,
            finish_reason: billed.finish_reason,
            // Nothing sent costs nothing; what was sent to a model with no
            // known price costs an unknown amount, never 0.
            cost: (price.is_some() || last.is_none()).then_some(cost),
            ..ItemRow::unsent(item.id.clone(), item.line, ItemStatus::Ok, Some(model))
        };
        // The item's reservations are settled with what it cost, whether it
        // ends here or stays pending.
        self.release_budget(reserved, cost);
        match (result, answer) {
            (Ok(reply), Some(Err(mismatch))) => {
                outcome.status = ItemStatus::Failed;
                outcome.output = Some(reply.text);
                outcome.error = Some(mismatch);
            }
            (Ok(reply), answer) => {
                outcome.output = Some(reply.text);
                outcome.output_json = answer.and_then(Result::ok).map(|v| v.to_string());
            }
            // Nothing more can be sent for the model: the run stops, and
            // the item stays pending like the rest. (Only the keys of the
            // account holding the item's files: it waits, deferred.)
            (Err(CallError::Unavailable(Unavailable::NoKey { model, .. })), _)
                if need.pin.is_none() =>
            {
                self.faults.refuse_keys(model);
                self.stop.cancel();
                return;
            }
            (Err(CallError::Unavailable(unavailable)), _) => {
                outcome.status = match unavailable {
                    Unavailable::DayExhausted { .. }
                    | Unavailable::ServerDelay { .. }
                    | Unavailable::NoKey { .. } => ItemStatus::Deferred,
                    _ => ItemStatus::Failed,
                };
                outcome.error = Some(unavailable.to_string());
            }
            (Err(CallError::Api(error)), _) => {
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
            (Err(CallError::Stopped | CallError::Ledger), _) => return,
            (Err(error @ CallError::Unreachable(_)), _) => {
                self.faults.push(error.to_string());
                self.stop.cancel();
                return;
            }
        }
        self.finish(outcome);
    }

    /// Sends the outcome of an item to the recorder, then tells the
    /// tracker, so a child's events always come after its parent's
    /// outcome. The recorder only goes away when the run is being torn
    /// down; the outcome then stays unrecorded and the item pending.
    fn finish(&self, outcome: ItemRow) {
        let ended = self.deps.as_ref().and_then(|deps| deps.outcome(&outcome));
        let _ = self.events.send(Event::Finished(outcome));
        if let (Some(deps), Some(ended)) = (&self.deps, ended) {
            deps.end(ended);
        }
    }

    /// Ends `item` as failed before anything was sent for it, with `error`.
    fn fail_unsent(&self, item: &Item, model: &str, error: String) {
        let outcome = ItemRow {
            error: Some(error),
            ..ItemRow::unsent(item.id.clone(), item.line, ItemStatus::Failed, Some(model))
        };
        self.finish(outcome);
    }

    /// Reserves `worst` USD under the budget, if there is one. When it does
    /// not fit, the run stops sending (and says so, the first time).
    fn reserve(&self, worst: f64) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        match budget.reserve(worst) {
            Fits::Yes => true,
            Fits::No { first } => {
                if first {
                    let cap = budget.cap();
                    let _ = self
                        .events
                        .send(Event::Notice(Notice::BudgetReached { cap }));
                }
                self.stop.cancel();
                false
            }
        }
    }

    /// Replaces the item's budget reservations, `reserved` in all, by what
    /// it cost.
    fn release_budget(&self, reserved: f64, cost: f64) {
        if let Some(budget) = &self.budget {
            budget.settle(reserved, cost);
        }
    }
}

fn attempt_row(
    item: &str,
    model: &str,
    price: Option<Price>,
    attempt: &Attempt<'_>,
    usage: &Usage,
) -> AttemptRow {
    AttemptRow {
        item_id: item.to_owned(),
        attempt: attempt.number,
        key: attempt.key.fingerprint().to_owned(),
        account: attempt.account.to_owned(),
        model: model.to_owned(),
        class: attempt_class(attempt.error),
        http_status: match attempt.error {
            None => Some(200),
            Some(e) => e.status,
        },
        latency_ms: attempt.latency.as_millis() as u64,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        // Unknown with the price, never 0.
        cost_usd: price.map(|p| p.cost(usage)),
        error: attempt.error.map(|e| e.message.clone()),
        at: crate::store::now(),
        day: attempt.day.to_string(),
    }
}

/// How an attempt ended, as stored: the one mapping from the provider's
/// error classes.
fn attempt_class(error: Option<&ApiError>) -> AttemptClass {
    match error.map(|e| &e.class) {
        None => AttemptClass::Ok,
        Some(ErrorClass::RateLimited { .. }) => AttemptClass::RateLimited,
        Some(ErrorClass::KeyInvalid { .. }) => AttemptClass::KeyInvalid,
        Some(ErrorClass::Transient | ErrorClass::EmptyAnswer | ErrorClass::Overloaded { .. }) => {
            AttemptClass::Transient
        }
        Some(ErrorClass::ItemInvalid) => AttemptClass::ItemInvalid,
        Some(ErrorClass::Blocked { .. }) => AttemptClass::Blocked,
    }
}
