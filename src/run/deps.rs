//! Holding items back until their parents end (`depends_on`).
//!
//! The feeder reads the job in order and hands each item with parents to
//! the [`Tracker`]: sent at once (its `{{outputs.…}}` placeholders filled)
//! when every parent ended `ok`, ended `skipped` naming the parent when one
//! did not (failed, blocked, skipped), left pending when one will not end in
//! this run (deferred, stopped, left out), else held. A worker tells the
//! tracker when a parent ends; the children it releases go back to the
//! feeder, which sends them before the next item of the file. Once the file
//! is read and nothing is held, the feeder ends and so do the workers.
//!
//! Memory: a parent's answer is kept only while a child of it is still to
//! be built, and an item is held only while a parent of it is unfinished;
//! a job without dependencies has no tracker at all.
//!
//! Owns: the held children, the parents' answers they wait for, and the
//! `skipped` rows of children whose parent did not end `ok`. Never: the
//! graph's checks or the placeholders' syntax (in [`crate::job::deps`]),
//! nor reading the job file or sending a request.

use super::{send_unless_cancelled, Event};
use crate::job::deps::{fill, Answer, Graph};
use crate::job::{id_hash, Item, ItemError};
use crate::provider::Scrubber;
use crate::store::{ItemRow, ItemStatus, RunId, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a parent ended, as its children see it.
#[derive(Debug, Clone)]
pub(super) enum Ended {
    /// Answered: its children may be built.
    Ok(Arc<Answer>),
    /// Failed, blocked or skipped: its children are skipped, naming it.
    NotOk(ItemStatus),
    /// It will not end in this run (deferred, stopped, left out): its
    /// children stay pending too.
    Pending,
}

impl Ended {
    /// How the item of `row` ended, for its children.
    fn of(row: &ItemRow) -> Ended {
        match row.status {
            ItemStatus::Ok => Ended::Ok(Arc::new(Answer {
                text: row.output.clone().unwrap_or_default(),
                json: row
                    .output_json
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok()),
            })),
            ItemStatus::Deferred => Ended::Pending,
            other => Ended::NotOk(other),
        }
    }
}

/// A run's dependencies: the job's graph and the outcomes of the parents
/// that an earlier invocation of the run finished, read from the state
/// file, for the children still to do.
#[derive(Debug, Default)]
pub struct Dependencies {
    graph: Arc<Graph>,
    earlier: HashMap<u64, Ended>,
}

impl Dependencies {
    /// The dependencies of the job whose `graph` validation built, in
    /// `run`, whose items `done` (by [`id_hash`]) are finished: the outcome
    /// of each finished parent of an unfinished child is read from `store`.
    pub fn load(
        graph: Arc<Graph>,
        store: &Store,
        run: RunId,
        done: &HashSet<u64>,
    ) -> Result<Dependencies, StoreError> {
        let needed: HashSet<u64> = graph
            .edges()
            .filter(|(child, _)| !done.contains(child))
            .flat_map(|(_, parents)| parents.iter().copied())
            .filter(|parent| done.contains(parent))
            .collect();
        let mut earlier = HashMap::new();
        if !needed.is_empty() {
            store
                .for_each_item(run, |row| {
                    let hash = id_hash(&row.id);
                    if needed.contains(&hash) {
                        earlier.insert(hash, Ended::of(&row));
                    }
                    Ok::<_, std::convert::Infallible>(())
                })?
                .unwrap_or_else(|never| match never {});
        }
        Ok(Dependencies { graph, earlier })
    }

    /// Whether an item of `id` may be sent by `--sample`: it is valid and
    /// every parent of it is finished (`done`).
    pub(super) fn may_sample(&self, item: &Item, done: &HashSet<u64>) -> bool {
        self.graph.invalid(&item.id).is_none()
            && item.depends_on.iter().all(|p| done.contains(&id_hash(p)))
    }

    /// The tracker of a run, if the job has dependencies: released
    /// children go to the returned receiver.
    pub(super) fn tracker(
        &self,
        done: &HashSet<u64>,
        default_model: &str,
        scrubber: Scrubber,
        events: mpsc::UnboundedSender<Event>,
    ) -> Option<(Arc<Tracker>, mpsc::UnboundedReceiver<Item>)> {
        if self.graph.is_empty() {
            return None;
        }
        let mut remaining: HashMap<u64, u32> = HashMap::new();
        for (child, parents) in self.graph.edges() {
            if !done.contains(&child) {
                for &parent in parents {
                    *remaining.entry(parent).or_default() += 1;
                }
            }
        }
        let (release, released) = mpsc::unbounded_channel();
        let tracker = Tracker {
            graph: Arc::clone(&self.graph),
            default_model: default_model.to_owned(),
            scrubber,
            events,
            state: Mutex::new(State {
                ended: self.earlier.clone(),
                remaining,
                held: HashMap::new(),
                waiters: HashMap::new(),
                release: Some(release),
                reading: true,
            }),
        };
        Some((Arc::new(tracker), released))
    }
}

/// An item waiting for its parents.
struct Held {
    item: Item,
    /// Parents not ended yet.
    waiting: usize,
}

struct State {
    /// How parents ended, kept while a child of theirs is still to be
    /// built, by [`id_hash`].
    ended: HashMap<u64, Ended>,
    /// Per parent, its children still to be built in this run.
    remaining: HashMap<u64, u32>,
    /// Items waiting for a parent, by [`id_hash`].
    held: HashMap<u64, Held>,
    /// Per unfinished parent, the held items waiting for it.
    waiters: HashMap<u64, Vec<u64>>,
    /// Where released items go; dropped once the job is read and nothing
    /// is held, which ends the feeder.
    release: Option<mpsc::UnboundedSender<Item>>,
    /// Whether the feeder is still reading the job.
    reading: bool,
}

/// Holds items back until their parents end, and releases them.
pub(super) struct Tracker {
    graph: Arc<Graph>,
    default_model: String,
    /// The outcome rows go to the store and the results through the
    /// recorder, which scrubs them; the answers a child is built from are
    /// scrubbed alike, so a resumed run builds the same prompt.
    scrubber: Scrubber,
    events: mpsc::UnboundedSender<Event>,
    state: Mutex<State>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `entry`, or for an item whose dependencies are invalid, its error
    /// (the run skips it like an invalid line).
    pub(super) fn check(&self, entry: Result<Item, ItemError>) -> Result<Item, ItemError> {
        match entry {
            Ok(item) => match self.graph.invalid(&item.id) {
                Some(error) => Err(error.clone()),
                None => Ok(item),
            },
            error => error,
        }
    }

    /// The feeder read `item`: the item to send now (its placeholders
    /// filled), or `None` when it is held, skipped, failed or left pending.
    pub(super) fn admit(&self, item: Item) -> Option<Item> {
        if item.depends_on.is_empty() {
            return Some(item);
        }
        let mut state = self.lock();
        let mut waiting = Vec::new();
        let mut pending = false;
        let mut failed = None;
        for parent in &item.depends_on {
            let hash = id_hash(parent);
            match state.ended.get(&hash) {
                Some(Ended::Ok(_)) => {}
                Some(Ended::NotOk(status)) => {
                    failed = Some((hash, *status));
                    break;
                }
                Some(Ended::Pending) => pending = true,
                None => waiting.push(hash),
            }
        }
        if let Some((parent, status)) = failed {
            let mut queue = Vec::new();
            self.skip(&mut state, item, parent, status, &mut queue);
            self.cascade(&mut state, queue);
            return None;
        }
        let child = id_hash(&item.id);
        if pending {
            built(&mut state, &item);
            self.cascade(&mut state, vec![(child, Ended::Pending)]);
            return None;
        }
        if waiting.is_empty() {
            let mut queue = Vec::new();
            let item = self.build(&mut state, item, &mut queue);
            self.cascade(&mut state, queue);
            return item;
        }
        for &parent in &waiting {
            state.waiters.entry(parent).or_default().push(child);
        }
        let waiting = waiting.len();
        state.held.insert(child, Held { item, waiting });
        None
    }

    /// The feeder left `item` out (not in `--sample`'s choice): it will
    /// not end in this run, nor its children.
    pub(super) fn passed(&self, item: &Item) {
        let mut state = self.lock();
        built(&mut state, item);
        let hash = id_hash(&item.id);
        if state.remaining.contains_key(&hash) && !state.ended.contains_key(&hash) {
            self.cascade(&mut state, vec![(hash, Ended::Pending)]);
        }
    }

    /// How the item of `row` ended, if it is a parent with children still
    /// to build: told to [`Tracker::end`] once the row is on its way to
    /// the recorder.
    pub(super) fn outcome(&self, row: &ItemRow) -> Option<(u64, Ended)> {
        let hash = id_hash(&row.id);
        if !self.lock().remaining.contains_key(&hash) {
            return None;
        }
        let mut ended = Ended::of(row);
        if let Ended::Ok(answer) = &mut ended {
            let mut text = answer.text.clone();
            self.scrubber.clean(&mut text);
            ended = Ended::Ok(Arc::new(Answer {
                text,
                json: answer.json.clone(),
            }));
        }
        Some((hash, ended))
    }

    /// A parent ended (see [`Tracker::outcome`]).
    pub(super) fn end(&self, (hash, ended): (u64, Ended)) {
        self.cascade(&mut self.lock(), vec![(hash, ended)]);
    }

    /// A worker is done with the item `id`: if it is a parent that did not
    /// end (the run stopped, a panic), its children stay pending.
    pub(super) fn settled(&self, id: &str) {
        let hash = id_hash(id);
        let mut state = self.lock();
        if state.remaining.contains_key(&hash) && !state.ended.contains_key(&hash) {
            self.cascade(&mut state, vec![(hash, Ended::Pending)]);
        }
    }

    /// Each parent in `queue` ended: its held children are released,
    /// skipped or left pending, and so on down.
    fn cascade(&self, state: &mut State, mut queue: Vec<(u64, Ended)>) {
        while let Some((hash, ended)) = queue.pop() {
            if state.remaining.get(&hash).is_some_and(|&n| n > 0) {
                state.ended.insert(hash, ended.clone());
            }
            for child in state.waiters.remove(&hash).unwrap_or_default() {
                let Some(held) = state.held.get_mut(&child) else {
                    continue;
                };
                if let Ended::Ok(_) = ended {
                    held.waiting -= 1;
                    if held.waiting > 0 {
                        continue;
                    }
                }
                let Some(Held { item, .. }) = state.held.remove(&child) else {
                    continue;
                };
                match &ended {
                    Ended::Ok(_) => {
                        if let Some(item) = self.build(state, item, &mut queue) {
                            if let Some(release) = &state.release {
                                let _ = release.send(item);
                            }
                        }
                    }
                    Ended::NotOk(status) => self.skip(state, item, hash, *status, &mut queue),
                    Ended::Pending => {
                        built(state, &item);
                        queue.push((child, Ended::Pending));
                    }
                }
            }
        }
        if !state.reading && state.held.is_empty() {
            state.release = None;
        }
    }

    /// `item` with its placeholders filled from its parents' answers (all
    /// ended `ok`); if one cannot be filled, the item fails unsent.
    fn build(
        &self,
        state: &mut State,
        mut item: Item,
        queue: &mut Vec<(u64, Ended)>,
    ) -> Option<Item> {
        let ended = &state.ended;
        let filled = fill(&mut item, &|id| match ended.get(&id_hash(id)) {
            Some(Ended::Ok(answer)) => Some(&**answer),
            _ => None,
        });
        built(state, &item);
        match filled {
            Ok(()) => Some(item),
            Err(error) => {
                self.record(&item, ItemStatus::Failed, error);
                queue.push((id_hash(&item.id), Ended::NotOk(ItemStatus::Failed)));
                None
            }
        }
    }

    /// Ends `item` skipped: its parent `parent` ended `status`.
    fn skip(
        &self,
        state: &mut State,
        item: Item,
        parent: u64,
        status: ItemStatus,
        queue: &mut Vec<(u64, Ended)>,
    ) {
        built(state, &item);
        let name = item
            .depends_on
            .iter()
            .find(|p| id_hash(p) == parent)
            .map_or("?", String::as_str);
        let how = match status {
            ItemStatus::Skipped => "was skipped",
            ItemStatus::Blocked => "was blocked",
            _ => "failed",
        };
        self.record(
            &item,
            ItemStatus::Skipped,
            format!("depends on `{name}`, which {how}"),
        );
        queue.push((id_hash(&item.id), Ended::NotOk(ItemStatus::Skipped)));
    }

    /// Records `item`, unsent, as `status` with `error`.
    fn record(&self, item: &Item, status: ItemStatus, error: String) {
        let model = item.model.as_deref().unwrap_or(&self.default_model);
        let row = ItemRow {
            error: Some(error),
            ..ItemRow::unsent(item.id.clone(), item.line, status, Some(model))
        };
        let _ = self.events.send(Event::Finished(row));
    }

    /// The feeder has read the whole job (or stopped reading).
    fn read(&self) {
        let mut state = self.lock();
        state.reading = false;
        if state.held.is_empty() {
            state.release = None;
        }
    }
}

/// `item` has been built (sent, skipped or left): its parents' answers are
/// freed when no other child needs them.
fn built(state: &mut State, item: &Item) {
    for parent in &item.depends_on {
        let hash = id_hash(parent);
        if let Some(n) = state.remaining.get_mut(&hash) {
            *n -= 1;
            if *n == 0 {
                state.remaining.remove(&hash);
                state.ended.remove(&hash);
            }
        }
    }
}

/// The feeder's side of the tracker: the items it releases.
pub(super) struct Feed {
    /// The tracker the feeder hands each item with parents to.
    pub(super) tracker: Arc<Tracker>,
    /// Children the tracker released, for the feeder to send.
    pub(super) released: mpsc::UnboundedReceiver<Item>,
}

impl Feed {
    /// Sends the items released so far to the workers, before the next item
    /// of the job. Whether the workers still take items.
    pub(super) fn forward(
        &mut self,
        items: &mpsc::Sender<Item>,
        cancel: &CancellationToken,
    ) -> bool {
        while let Ok(item) = self.released.try_recv() {
            if !send_unless_cancelled(items, item, cancel) {
                return false;
            }
        }
        true
    }

    /// The job is read: sends what is released until nothing is held (or
    /// the run stops).
    pub(super) fn finish(mut self, items: &mpsc::Sender<Item>, cancel: &CancellationToken) {
        self.tracker.read();
        let handle = tokio::runtime::Handle::current();
        loop {
            let item = handle.block_on(async {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    item = self.released.recv() => item,
                }
            });
            let Some(item) = item else { return };
            if !send_unless_cancelled(items, item, cancel) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{validate, JobReader};

    /// The tracker of a JSONL job, its items in file order, and the events
    /// it sends.
    fn tracker(
        job: &str,
    ) -> (
        Arc<Tracker>,
        mpsc::UnboundedReceiver<Item>,
        Vec<Item>,
        mpsc::UnboundedReceiver<Event>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.jsonl");
        std::fs::write(&path, job).unwrap();
        let graph = validate(&path).unwrap().deps;
        let items = JobReader::open(&path).unwrap().flatten().collect();
        let deps = Dependencies {
            graph,
            earlier: HashMap::new(),
        };
        let (events, events_rx) = mpsc::unbounded_channel();
        let scrubber = Scrubber::new(std::iter::empty::<&crate::types::ApiKey>());
        let (tracker, released) = deps
            .tracker(&HashSet::new(), "m", scrubber, events)
            .unwrap();
        (tracker, released, items, events_rx)
    }

    fn answered(id: &str, status: ItemStatus, output: &str) -> ItemRow {
        ItemRow {
            output: Some(output.to_owned()),
            ..ItemRow::unsent(id.to_owned(), 0, status, Some("m"))
        }
    }

    #[test]
    fn an_answer_is_kept_until_its_last_child_is_built_and_a_failure_skips_down() {
        let job = r#"{"id":"c1","prompt":"1 {{outputs.p}}","depends_on":["p"]}
{"id":"p","prompt":"p"}
{"id":"c2","prompt":"2 {{outputs.p}}","depends_on":["p"]}
{"id":"q","prompt":"q"}
{"id":"d","prompt":"d","depends_on":["q"]}
{"id":"e","prompt":"e","depends_on":["d"]}
"#;
        let (tracker, mut released, items, mut events) = tracker(job);
        let mut items = items.into_iter();
        let mut next = || tracker.admit(items.next().unwrap());
        assert!(next().is_none(), "c1 waits for p");
        assert_eq!(next().unwrap().prompt, "p");
        let row = answered("p", ItemStatus::Ok, "P!");
        tracker.end(tracker.outcome(&row).unwrap());
        assert_eq!(released.try_recv().unwrap().prompt, "1 P!");
        assert!(
            tracker.lock().ended.contains_key(&id_hash("p")),
            "c2 needs it"
        );
        assert_eq!(next().unwrap().prompt, "2 P!");
        assert!(tracker.lock().ended.is_empty(), "no child needs p any more");
        assert!(!tracker.lock().remaining.contains_key(&id_hash("p")));

        assert_eq!(next().unwrap().prompt, "q");
        assert!(next().is_none(), "d waits for q");
        assert!(next().is_none(), "e waits for d");
        let row = answered("q", ItemStatus::Failed, "");
        tracker.end(tracker.outcome(&row).unwrap());
        let mut skipped = Vec::new();
        while let Ok(Event::Finished(row)) = events.try_recv() {
            skipped.push((row.id, row.status, row.error.unwrap()));
        }
        assert_eq!(
            skipped,
            [
                (
                    "d".to_owned(),
                    ItemStatus::Skipped,
                    "depends on `q`, which failed".to_owned()
                ),
                (
                    "e".to_owned(),
                    ItemStatus::Skipped,
                    "depends on `d`, which was skipped".to_owned()
                ),
            ]
        );
        let state = tracker.lock();
        assert!(state.held.is_empty() && state.ended.is_empty() && state.waiters.is_empty());
        assert!(state.remaining.is_empty());
    }
}
