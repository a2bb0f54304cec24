//! Dependencies between items: `depends_on: [id, …]` holds an item back
//! until its parents are answered, and `{{outputs.ID}}` (or
//! `{{outputs.ID.json.a.b}}` for a parent with a `response_schema`) in its
//! prompt, earlier turns or system instruction is replaced by a parent's
//! answer when the item is sent.
//!
//! Owns: the placeholders (parsed, checked against `depends_on`, filled)
//! and the job's dependency [`Graph`], built by [`super::validate`] from the
//! items that have parents: an unknown parent, a cycle, a `json`
//! placeholder on a parent without a schema, and every item downstream of
//! such an item are item errors on their lines. Never: what is sent or
//! when (the run's scheduler does that with the graph).
//!
//! Memory: only the items that have parents are held while the graph is
//! built (their ids, lines and parents), never the rest of the job.

use super::{id_hash, Item, ItemError, JobError, JobReader};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What opens a placeholder naming a parent's answer.
const OPEN: &str = "{{";
/// Its prefix inside the braces.
const OUTPUTS: &str = "outputs.";

/// A parent's answer, as a child's placeholders take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The answer's text (`output`).
    pub text: String,
    /// The parsed answer, for a parent with a `response_schema`.
    pub json: Option<Value>,
}

/// One `{{outputs.…}}` placeholder of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placeholder {
    /// Its bytes in the text, braces included.
    span: std::ops::Range<usize>,
    /// The parent's id: one of the item's `depends_on`.
    parent: String,
    /// `None`: the answer's text; `Some(path)`: its JSON at that dotted
    /// path (empty: the whole JSON).
    json: Option<Vec<String>>,
}

impl Placeholder {
    /// The placeholder as written, for messages.
    fn written(&self, text: &str) -> String {
        text[self.span.clone()].to_owned()
    }
}

/// Every `{{outputs.…}}` placeholder of `text`, each resolved against
/// `parents`: `outputs.ID` is the answer of the parent `ID`;
/// `outputs.ID.json` its JSON, `outputs.ID.json.a.0.b` a value inside it.
/// Other `{{…}}` are left alone. A placeholder naming no parent is the
/// error.
fn placeholders(text: &str, parents: &[String]) -> Result<Vec<Placeholder>, String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find(OPEN).map(|at| from + at) {
        let inner_start = open + OPEN.len();
        let Some(close) = text[inner_start..].find("}}").map(|at| inner_start + at) else {
            break;
        };
        from = close + 2;
        let Some(name) = text[inner_start..close].trim().strip_prefix(OUTPUTS) else {
            from = inner_start;
            continue;
        };
        let span = open..close + 2;
        let resolved = resolve(name, parents).ok_or_else(|| {
            format!(
                "`{}` names no item of `depends_on` ({}): list the item there",
                &text[span.clone()],
                match parents.is_empty() {
                    true => "empty".to_owned(),
                    false => parents
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            )
        })?;
        found.push(Placeholder {
            span,
            parent: resolved.0,
            json: resolved.1,
        });
    }
    Ok(found)
}

/// The parent and JSON path `name` (after `outputs.`) names: the whole of
/// it is a parent's id, or a parent's id followed by `.json` and an
/// optional dotted path. The longest id wins, so ids may hold dots.
fn resolve(name: &str, parents: &[String]) -> Option<(String, Option<Vec<String>>)> {
    if parents.iter().any(|p| p == name) {
        return Some((name.to_owned(), None));
    }
    parents
        .iter()
        .filter_map(|parent| {
            let rest = name.strip_prefix(parent.as_str())?.strip_prefix(".json")?;
            let path = match rest {
                "" => Vec::new(),
                rest => rest
                    .strip_prefix('.')?
                    .split('.')
                    .map(str::to_owned)
                    .collect(),
            };
            (!path.iter().any(String::is_empty)).then(|| (parent.clone(), Some(path)))
        })
        .max_by_key(|(parent, _)| parent.len())
}

/// The texts of an item that may hold placeholders, with their field names.
fn texts(item: &Item) -> impl Iterator<Item = (&'static str, &str)> {
    std::iter::once(("prompt", item.prompt.as_str()))
        .chain(item.turns.iter().map(|t| ("messages", t.text.as_str())))
        .chain(item.system.as_deref().map(|s| ("system", s)))
}

/// What [`check`] found of an item's placeholders: the parents whose JSON
/// they use.
pub(super) struct Uses {
    /// Parents named by a `json` placeholder.
    pub(super) json: Vec<String>,
}

/// Checks an item's dependencies on their own: it does not depend on
/// itself, and every placeholder names one of its parents. The field and
/// reason of the first problem.
pub(super) fn check(item: &Item) -> Result<Uses, (&'static str, String)> {
    if item.depends_on.contains(&item.id) {
        return Err(("depends_on", format!("`{}` depends on itself", item.id)));
    }
    let mut json = Vec::new();
    for (field, text) in texts(item) {
        for placeholder in placeholders(text, &item.depends_on).map_err(|e| (field, e))? {
            if placeholder.json.is_some() && !json.contains(&placeholder.parent) {
                json.push(placeholder.parent);
            }
        }
    }
    Ok(Uses { json })
}

/// Fills every placeholder of `item` with its parents' answers (`answer`
/// gives a parent's by id). The error names the placeholder that cannot be
/// filled: a JSON path its parent's answer does not have.
pub fn fill<'a>(
    item: &mut Item,
    answer: &dyn Fn(&str) -> Option<&'a Answer>,
) -> Result<(), String> {
    let parents = std::mem::take(&mut item.depends_on);
    let mut result = Ok(());
    let mut each = |text: &mut String| {
        if result.is_ok() {
            match filled(text, &parents, answer) {
                Ok(Some(new)) => *text = new,
                Ok(None) => {}
                Err(e) => result = Err(e),
            }
        }
    };
    each(&mut item.prompt);
    for turn in &mut item.turns {
        each(&mut turn.text);
    }
    if let Some(system) = &mut item.system {
        each(system);
    }
    item.depends_on = parents;
    result
}

/// `text` with its placeholders filled; `None` when it has none.
fn filled<'a>(
    text: &str,
    parents: &[String],
    answer: &dyn Fn(&str) -> Option<&'a Answer>,
) -> Result<Option<String>, String> {
    let found = placeholders(text, parents)?;
    if found.is_empty() {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for placeholder in &found {
        out.push_str(&text[at..placeholder.span.start]);
        at = placeholder.span.end;
        let written = || placeholder.written(text);
        let answer = answer(&placeholder.parent)
            .ok_or_else(|| format!("`{}`: no answer of `{}`", written(), placeholder.parent))?;
        let Some(path) = &placeholder.json else {
            out.push_str(&answer.text);
            continue;
        };
        let mut value = answer.json.as_ref().ok_or_else(|| {
            format!(
                "`{}`: the answer of `{}` is not JSON",
                written(),
                placeholder.parent
            )
        })?;
        for step in path {
            value = match value {
                Value::Object(map) => map.get(step),
                Value::Array(list) => step.parse::<usize>().ok().and_then(|i| list.get(i)),
                _ => None,
            }
            .filter(|v| !v.is_null())
            .ok_or_else(|| {
                format!(
                    "`{}`: the answer of `{}` has no `{step}` there",
                    written(),
                    placeholder.parent
                )
            })?;
        }
        match value {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
    }
    out.push_str(&text[at..]);
    Ok(Some(out))
}

/// The job's dependencies, as the run needs them: each item with parents
/// (by [`id_hash`]) and its parents, and the items that cannot run because
/// of their dependencies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// The parents of each valid item that has some, by [`id_hash`].
    parents: HashMap<u64, Box<[u64]>>,
    /// Items whose dependencies are wrong (or lead to one that is), by
    /// [`id_hash`], with their error: a run skips them like invalid lines.
    invalid: HashMap<u64, ItemError>,
}

impl Graph {
    /// Whether no item has a parent.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty() && self.invalid.is_empty()
    }

    /// The error of an item that cannot run because of its dependencies.
    pub fn invalid(&self, id: &str) -> Option<&ItemError> {
        match self.invalid.is_empty() {
            true => None,
            false => self.invalid.get(&id_hash(id)),
        }
    }

    /// The parents of each valid item that has some, by [`id_hash`].
    pub fn edges(&self) -> impl Iterator<Item = (u64, &[u64])> {
        self.parents
            .iter()
            .map(|(&child, parents)| (child, &**parents))
    }
}

/// An item with parents, as the graph is built.
struct Node {
    id: String,
    line: u64,
    parents: Vec<String>,
    /// Parents whose JSON a placeholder uses.
    json: Vec<String>,
}

/// Collects the items with parents while a job is validated, then checks
/// them together ([`Builder::finish`]).
#[derive(Default)]
pub(super) struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    /// Adds `item` if it has parents (it passed [`check`]).
    pub(super) fn add(&mut self, item: &Item) {
        if !item.depends_on.is_empty() {
            self.nodes.push(Node {
                id: item.id.clone(),
                line: item.line,
                parents: item.depends_on.clone(),
                json: check(item).map(|uses| uses.json).unwrap_or_default(),
            });
        }
    }

    /// Checks the parents of every item added against the job's valid
    /// items (`known`: the line of each, by [`id_hash`]), the items in
    /// `path` (read again only when a `json` placeholder needs to know
    /// whether its parent has a schema), and returns the graph with its
    /// errors, in line order. `items_path` is the file the lines are in.
    pub(super) fn finish(
        self,
        path: &Path,
        items_path: &Path,
        known: &super::FirstLines,
    ) -> Result<Graph, JobError> {
        let nodes = self.nodes;
        let at = |node: &Node, field: &str, reason: String| ItemError {
            path: items_path.to_owned(),
            line: node.line,
            field: Some(field.to_owned()),
            reason,
        };
        let index: HashMap<u64, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (id_hash(&n.id), i))
            .collect();
        let mut invalid: HashMap<usize, ItemError> = HashMap::new();
        // Parents that are no valid item of the job.
        for (i, node) in nodes.iter().enumerate() {
            let unknown: Vec<String> = node
                .parents
                .iter()
                .filter(|p| !known.contains_key(&id_hash(p)))
                .map(|p| format!("`{p}`"))
                .collect();
            if !unknown.is_empty() {
                let reason = format!(
                    "unknown id {}: no valid item of the job has it",
                    unknown.join(", ")
                );
                invalid.insert(i, at(node, "depends_on", reason));
            }
        }
        // `json` placeholders on parents without a schema.
        let wanted: HashSet<u64> = nodes
            .iter()
            .flat_map(|n| n.json.iter().map(|p| id_hash(p)))
            .collect();
        if !wanted.is_empty() {
            let structured = structured(path, &wanted)?;
            for (i, node) in nodes.iter().enumerate() {
                if invalid.contains_key(&i) {
                    continue;
                }
                if let Some(parent) = node.json.iter().find(|p| !structured.contains(&id_hash(p))) {
                    let reason = format!(
                        "`{{{{outputs.{parent}.json…}}}}`: `{parent}` has no response_schema, so \
                         its answer is not JSON"
                    );
                    invalid.insert(i, at(node, "prompt", reason));
                }
            }
        }
        for cycle in cycles(&nodes, &index) {
            let named: Vec<String> = cycle
                .iter()
                .chain(cycle.first())
                .map(|&i| format!("`{}` (line {})", nodes[i].id, nodes[i].line))
                .collect();
            let reason = format!(
                "a cycle of dependencies: {} (each depends on the next)",
                named.join(" → ")
            );
            for &i in &cycle {
                invalid
                    .entry(i)
                    .or_insert_with(|| at(&nodes[i], "depends_on", reason.clone()));
            }
        }
        // Every item downstream of an invalid one cannot run either.
        let mut children: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for parent in &node.parents {
                children.entry(id_hash(parent)).or_default().push(i);
            }
        }
        let mut queue: Vec<usize> = invalid.keys().copied().collect();
        while let Some(bad) = queue.pop() {
            let name = &nodes[bad].id;
            for &child in children.get(&id_hash(name)).into_iter().flatten() {
                if invalid.contains_key(&child) {
                    continue;
                }
                let reason = format!(
                    "depends on `{name}` (line {}), which cannot run",
                    nodes[bad].line
                );
                invalid.insert(child, at(&nodes[child], "depends_on", reason));
                queue.push(child);
            }
        }
        let mut graph = Graph::default();
        for (i, node) in nodes.into_iter().enumerate() {
            let hash = id_hash(&node.id);
            match invalid.remove(&i) {
                Some(error) => _ = graph.invalid.insert(hash, error),
                None => {
                    let parents = node.parents.iter().map(|p| id_hash(p)).collect();
                    graph.parents.insert(hash, parents);
                }
            }
        }
        Ok(graph)
    }
}

impl Graph {
    /// The errors of the invalid items, in line order.
    pub(super) fn errors(&self) -> Vec<ItemError> {
        let mut errors: Vec<ItemError> = self.invalid.values().cloned().collect();
        errors.sort_by_key(|e| e.line);
        errors
    }
}

/// The items among `wanted` (by [`id_hash`]) that have a `response_schema`,
/// read from the job at `path`.
fn structured(path: &Path, wanted: &HashSet<u64>) -> Result<HashSet<u64>, JobError> {
    let mut found = HashSet::new();
    for item in JobReader::open(path)?.flatten() {
        let hash = id_hash(&item.id);
        if item.generation.response_schema.is_some() && wanted.contains(&hash) {
            found.insert(hash);
        }
    }
    Ok(found)
}

/// The cycles among `nodes` (each as its members in order, each depending
/// on the next and the last on the first), once each. Kahn's algorithm
/// removes every item not in or downstream of a cycle; from each one left,
/// walking up its parents still left must come round to a node already on
/// the walk.
fn cycles(nodes: &[Node], index: &HashMap<u64, usize>) -> Vec<Vec<usize>> {
    let parents: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            n.parents
                .iter()
                .filter_map(|p| index.get(&id_hash(p)).copied())
                .collect()
        })
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (child, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(child);
        }
    }
    let mut waiting: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut left = vec![true; nodes.len()];
    while let Some(i) = ready.pop() {
        left[i] = false;
        for &child in &children[i] {
            waiting[child] -= 1;
            if waiting[child] == 0 {
                ready.push(child);
            }
        }
    }
    let mut found = Vec::new();
    let mut seen = vec![false; nodes.len()];
    for start in 0..nodes.len() {
        if !left[start] || seen[start] {
            continue;
        }
        let mut walk = Vec::new();
        let mut on_walk: HashMap<usize, usize> = HashMap::new();
        let mut at = start;
        loop {
            if let Some(&from) = on_walk.get(&at) {
                found.push(walk[from..].to_vec());
                break;
            }
            if seen[at] {
                break;
            }
            seen[at] = true;
            on_walk.insert(at, walk.len());
            walk.push(at);
            match parents[at].iter().find(|&&p| left[p]) {
                Some(&next) => at = next,
                None => break,
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(id: &str, prompt: &str, parents: &[&str]) -> Item {
        Item {
            id: id.to_owned(),
            prompt: prompt.to_owned(),
            depends_on: parents.iter().map(|p| (*p).to_owned()).collect(),
            ..Item::default()
        }
    }

    #[test]
    fn placeholders_name_a_parent_its_json_or_a_value_inside_it() {
        let parents = ["a".to_owned(), "a.b".to_owned()];
        let found = placeholders(
            "{{outputs.a}} {{ outputs.a.b }} {{outputs.a.json}} {{outputs.a.b.json.x.0}} {{row}}",
            &parents,
        )
        .unwrap();
        let named: Vec<(&str, Option<Vec<String>>)> = found
            .iter()
            .map(|p| (p.parent.as_str(), p.json.clone()))
            .collect();
        assert_eq!(
            named,
            [
                ("a", None),
                ("a.b", None),
                ("a", Some(vec![])),
                ("a.b", Some(vec!["x".to_owned(), "0".to_owned()])),
            ]
        );
        for wrong in [
            "{{outputs.c}}",
            "{{outputs.a.jsonx}}",
            "{{outputs.a.json.}}",
        ] {
            let error = placeholders(wrong, &parents).unwrap_err();
            assert!(
                error.contains("names no item of `depends_on` (`a`, `a.b`)"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_child_is_filled_from_its_parents_answers_everywhere() {
        let mut child = item(
            "c",
            "{{outputs.p}} | {{outputs.s.json.tags.1}} | {{outputs.s.json.n}} | {{outputs.s.json}}",
            &["p", "s"],
        );
        child.system = Some("Be like {{outputs.p}}".to_owned());
        let answers: HashMap<&str, Answer> = HashMap::from([
            (
                "p",
                Answer {
                    text: "plain".to_owned(),
                    json: None,
                },
            ),
            (
                "s",
                Answer {
                    text: String::new(),
                    json: Some(json!({"tags": ["x", "y"], "n": 3})),
                },
            ),
        ]);
        fill(&mut child, &|id| answers.get(id)).unwrap();
        assert_eq!(child.prompt, r#"plain | y | 3 | {"n":3,"tags":["x","y"]}"#);
        assert_eq!(child.system.as_deref(), Some("Be like plain"));
        assert_eq!(child.depends_on, ["p", "s"]);

        let mut missing = item("c", "{{outputs.s.json.tags.5}}", &["s"]);
        let error = fill(&mut missing, &|id| answers.get(id)).unwrap_err();
        assert_eq!(
            error,
            "`{{outputs.s.json.tags.5}}`: the answer of `s` has no `5` there"
        );
        let mut not_json = item("c", "{{outputs.p.json.x}}", &["p"]);
        let error = fill(&mut not_json, &|id| answers.get(id)).unwrap_err();
        assert!(error.contains("the answer of `p` is not JSON"), "{error}");
    }

    #[test]
    fn an_item_may_not_depend_on_itself_nor_name_other_items() {
        assert_eq!(
            check(&item("a", "x", &["a"])).err().unwrap().0,
            "depends_on"
        );
        let (field, reason) = check(&item("a", "{{outputs.b}}", &[])).err().unwrap();
        assert_eq!(field, "prompt");
        assert!(reason.contains("(empty)"), "{reason}");
        assert_eq!(
            check(&item("a", "{{outputs.b.json.x}}", &["b"]))
                .unwrap()
                .json,
            ["b"]
        );
    }

    #[test]
    fn cycles_are_found_once_each_and_what_hangs_below_them_is_not_one() {
        let node = |id: &str, parents: &[&str]| Node {
            id: id.to_owned(),
            line: 0,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            json: Vec::new(),
        };
        let nodes = [
            node("a", &["c"]),
            node("b", &["a", "root"]),
            node("c", &["b"]),
            node("below", &["c"]),
            node("self", &["x", "self"]),
            node("fine", &["root"]),
        ];
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (id_hash(&n.id), i))
            .collect();
        assert_eq!(cycles(&nodes, &index), [vec![0, 2, 1], vec![4]]);
    }

    #[test]
    fn a_csv_lists_parents_separated_by_bars_and_the_graph_keeps_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.csv");
        std::fs::write(
            &path,
            "id,prompt,depends_on\nb,\"{{outputs.a}}, {{outputs.c}}\",a | c\na,x,\nc,y,\nd,z,b|gone\n",
        )
        .unwrap();
        let validation = super::super::validate(&path).unwrap();
        assert_eq!(validation.items, 3);
        let errors: Vec<String> = validation.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].ends_with(
                "job.csv:5: field `depends_on`: unknown id `gone`: no valid item of the job has it"
            ),
            "{errors:?}"
        );
        let edges: Vec<(u64, Vec<u64>)> = validation
            .deps
            .edges()
            .map(|(c, p)| (c, p.to_vec()))
            .collect();
        assert_eq!(edges, [(id_hash("b"), vec![id_hash("a"), id_hash("c")])]);
        assert!(validation.deps.invalid("d").is_some());
    }
}
