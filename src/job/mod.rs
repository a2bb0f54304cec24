//! Job files: JSONL (one object per line) or CSV (a header row), read as a
//! stream of [`Item`]s. Every problem names the file, the line and the field.
//!
//! Owns: the job formats, the per-field checks, ids and the duplicate check,
//! and the content hash of what was read. Never: the network, the store or
//! the terminal; it does not decide what is sent, skipped or resumed.
//!
//! Both formats accept the same fields with the same checks (`fields`):
//! `id` (string or integer, required), `prompt` (required), `model`,
//! `system`, `max_output_tokens` (integer >= 1), `temperature` (0.0–2.0)
//! and the media fields `video`, `image`, `audio` and `document` (`media`)
//! with their settings `media_resolution`, `start_offset`, `end_offset` and
//! `fps`, and `depends_on` with its `{{outputs.ID}}` placeholders ([`deps`]).
//! Unknown fields are errors, to catch typos such as `promt`. An id used
//! twice is an error on its later line, naming the first.
//!
//! A JSONL job may also be a provider's own batch file, OpenAI's or
//! Gemini's, recognised by the shape of its first line (`batchfile`).
//!
//! Files are streamed: a million-line job is never held in memory, neither by
//! [`JobReader`] nor by [`validate`].

mod batchfile;
mod csv;
pub mod deps;
mod fields;
mod jsonl;
mod media;
mod spec;
mod template;
#[cfg(test)]
mod tests;

pub use media::{Media, MediaKind, MAX_FILE_BYTES};

use crate::provider::{Generation, ProviderKind, RawBody, Turn};
use sha2::{Digest, Sha256};
use std::collections::hash_map::{Entry, HashMap};
use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One prompt to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    /// The user's id for the item, unique within the job.
    pub id: String,
    /// 1-based line of the item in the job file (CSV: the record's line).
    pub line: u64,
    /// The user text (of a conversation, the last turn).
    pub prompt: String,
    /// A conversation's earlier turns (`messages`), oldest first.
    pub turns: Vec<Turn>,
    /// Model override; the config's default model when `None`.
    pub model: Option<String>,
    /// Optional system instruction.
    pub system: Option<String>,
    /// Optional output cap.
    pub max_output_tokens: Option<u32>,
    /// Optional sampling temperature.
    pub temperature: Option<f32>,
    /// The other generation settings (`top_p`, `stop`, …).
    pub generation: Generation,
    /// How many times an answer that does not fit `response_schema` is
    /// asked for again; `None`: [`DEFAULT_SCHEMA_RETRIES`].
    pub schema_retries: Option<u32>,
    /// Its media inputs (`video`, `image`, `audio`, `document`), in field
    /// order, every file checked when the item was read.
    pub media: Vec<Media>,
    /// The body of a line of a provider's own batch file, sent as it is;
    /// `prompt` then holds only its texts, for the token estimates.
    pub raw: Option<RawBody>,
    /// The ids of the items whose answers it waits for (`depends_on`),
    /// each once, in the order given.
    pub depends_on: Vec<String>,
}

/// How many times an answer that does not fit its schema is asked for
/// again when the item says nothing.
pub const DEFAULT_SCHEMA_RETRIES: u32 = 1;

/// The start of the id of a skipped line's row: `#line:7`. Job ids may not
/// start with it, so a skipped row never shares an item's id.
pub const SKIPPED_ID_PREFIX: &str = "#line:";

/// A problem with one item of a job file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}:{line}: {}{reason}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
pub struct ItemError {
    /// The job file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// The offending field, when one is to blame.
    pub field: Option<String>,
    /// What is wrong, as a lowercase fragment.
    pub reason: String,
}

impl ItemError {
    /// The id of the row that records this line as skipped:
    /// [`SKIPPED_ID_PREFIX`] and the line number.
    pub fn skipped_id(&self) -> String {
        format!("{SKIPPED_ID_PREFIX}{}", self.line)
    }
}

/// A job file that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file could not be opened.
    #[error("failed to open job {}", path.display())]
    Open {
        /// The job file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading failed part-way.
    #[error("failed to read job {}", path.display())]
    Read {
        /// The job file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file read during a run is not the file that was validated: it was
    /// edited, appended to or replaced in between.
    #[error(
        "{} changed while the run was reading it (sha256 {}… when validated, {}… when read)",
        path.display(), short(validated), short(read)
    )]
    Changed {
        /// The job file.
        path: PathBuf,
        /// The content hash [`validate`] computed.
        validated: String,
        /// The content hash of the bytes the run read.
        read: String,
    },
    /// A job spec that cannot be run: every problem found before its first
    /// row (its fields, templates, included files, data file header).
    #[error("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Spec {
        /// The problems, by line.
        errors: Vec<ItemError>,
    },
    /// The extension names no supported format.
    #[error(
        "{}: unsupported job format; supported extensions: .jsonl, .ndjson, .csv, .yaml, .yml",
        path.display()
    )]
    UnsupportedFormat {
        /// The job file.
        path: PathBuf,
    },
}

/// Streams a job file: the file is read incrementally (a 1,000,000-line job
/// must not be held in memory). Yields each item or what is wrong with it,
/// and goes on after an item error. A read failure part-way is yielded as an
/// item error on the line reached, and ends the stream.
///
/// An item whose id was already used is yielded as an error (naming the
/// first line), so whoever reads the job, validation or the run, never sees
/// it as an item. Ids are remembered by a 64-bit hash ([`id_hash`]) with
/// their first line, 16 bytes per item; two different ids collide with
/// probability about n²/2⁶⁵ (one in 37 million for a million items), and a
/// collision only yields a spurious duplicate error, never a missed one.
pub struct JobReader {
    path: PathBuf,
    format: Format,
    /// Set when reading failed; the stream has then ended.
    failure: Option<io::Error>,
    /// Set when the whole file has been read without a failure.
    ended: bool,
    /// The line where each id (by [`id_hash`]) was first used.
    first_lines: FirstLines,
    /// The same, as validation found it for the whole file, if given
    /// ([`JobReader::validated`]).
    validated: Arc<FirstLines>,
    /// Lines to pass over without reading them as items.
    skip: Arc<HashSet<u64>>,
}

/// Where each id of a job (by [`id_hash`]) was first used: its 1-based
/// line.
pub type FirstLines = HashMap<u64, u64, BuildHasherDefault<Hashed>>;

/// The hasher of keys that are hashes already ([`id_hash`]es): it takes
/// them as they are, rather than hash a million of them again.
#[derive(Debug, Default)]
pub struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// The format readers, over the file. The file's bytes are hashed as they
/// are read so that [`validate`] gets the content hash in the same pass.
/// Both readers keep answering "end" once at the end.
enum Format {
    Jsonl(jsonl::Lines<Hashing<File>>),
    Csv(csv::Rows<Hashing<File>>),
    Spec(Box<spec::Rows>),
}

impl JobReader {
    /// Opens `path`, choosing the format by extension (case-insensitive):
    /// `.jsonl` / `.ndjson`, `.csv`, or a `.yaml` / `.yml` spec (checked
    /// whole here: see [`JobError::Spec`]).
    pub fn open(path: &Path) -> Result<JobReader, JobError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let jsonl = match extension.as_deref() {
            Some("jsonl" | "ndjson") => true,
            Some("csv") => false,
            Some("yaml" | "yml") => {
                let rows = spec::open(path)?;
                return Ok(JobReader::with(path, Format::Spec(Box::new(rows))));
            }
            _ => {
                return Err(JobError::UnsupportedFormat {
                    path: path.to_owned(),
                })
            }
        };
        let file = File::open(path).map_err(|source| JobError::Open {
            path: path.to_owned(),
            source,
        })?;
        let file = Hashing {
            inner: file,
            hasher: Sha256::new(),
        };
        let format = if jsonl {
            Format::Jsonl(jsonl::Lines::new(file))
        } else {
            Format::Csv(csv::Rows::new(file))
        };
        Ok(JobReader::with(path, format))
    }

    fn with(path: &Path, format: Format) -> JobReader {
        JobReader {
            path: path.to_owned(),
            format,
            failure: None,
            ended: false,
            first_lines: FirstLines::default(),
            validated: Arc::default(),
            skip: Arc::default(),
        }
    }

    /// This reader of a job that [`validate`] read: the ids are checked
    /// against `ids`, its [`Validation::first_lines`], so an item whose id
    /// was first used on a line passed over is still a duplicate; and a
    /// JSONL job's lines in `skip` are passed over without being parsed
    /// (other formats yield them). The file's first item is always read,
    /// as it sets a JSONL file's shape. Bytes passed over are hashed all
    /// the same ([`JobReader::verify`]); an id `ids` lacks (the file
    /// changed since) is checked as by a plain reader.
    pub fn validated(self, ids: Arc<FirstLines>, skip: Arc<HashSet<u64>>) -> JobReader {
        JobReader {
            validated: ids,
            skip,
            ..self
        }
    }

    /// The sha256 (lowercase hex) of the whole file, the same hash as
    /// [`Validation::content_hash`], once iteration has reached the end of
    /// the file without a read failure; `None` before that.
    pub fn content_hash(&self) -> Option<String> {
        self.ended.then(|| self.hash_so_far())
    }

    /// Checks, once the reader has been read to the end, that the file read
    /// is the file validated (`validated` is its [`Validation::content_hash`]).
    /// [`JobError::Changed`] when it is not; `Ok` when it is, and also when
    /// the reader stopped before the end (a cancelled run), since part of a
    /// file cannot be compared with the whole.
    pub fn verify(&self, validated: &str) -> Result<(), JobError> {
        match self.content_hash() {
            Some(read) if read != validated => Err(JobError::Changed {
                path: self.path.clone(),
                validated: validated.to_owned(),
                read,
            }),
            _ => Ok(()),
        }
    }

    /// The provider whose own batch file the job is (a JSONL job whose
    /// first line has the shape of one of its lines), once that line has
    /// been read; `None` for keyfan's own formats.
    pub fn batch(&self) -> Option<ProviderKind> {
        match &self.format {
            Format::Jsonl(lines) => lines.batch(),
            _ => None,
        }
    }

    /// The sha256 (hex) of the bytes read so far.
    fn hash_so_far(&self) -> String {
        let hasher = match &self.format {
            Format::Jsonl(lines) => &lines.get_ref().hasher,
            Format::Csv(rows) => &rows.get_ref().hasher,
            Format::Spec(rows) => rows.hasher(),
        };
        hex::encode(hasher.clone().finalize())
    }
}

impl Iterator for JobReader {
    type Item = Result<Item, ItemError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failure.is_some() {
            return None;
        }
        let (next, line) = match &mut self.format {
            Format::Jsonl(lines) => {
                let skip = &self.skip;
                let next = lines.next(&self.path, |line| skip.contains(&line));
                (next, lines.line())
            }
            Format::Csv(rows) => (rows.next(&self.path), rows.line()),
            Format::Spec(rows) => (rows.next(), rows.line()),
        };
        match next {
            Ok(Some(Ok(item))) => Some(self.checked(item)),
            Ok(None) => {
                self.ended = true;
                None
            }
            Ok(other) => other,
            Err(err) => {
                let reason = format!("failed to read the file: {err}");
                self.failure = Some(err);
                Some(Err(ItemError {
                    path: self.items_path().to_owned(),
                    line,
                    field: None,
                    reason,
                }))
            }
        }
    }
}

impl JobReader {
    /// The file the items' lines are in: the job file, or a spec's data file.
    fn items_path(&self) -> &Path {
        match &self.format {
            Format::Spec(rows) => rows.items_path(),
            _ => &self.path,
        }
    }

    /// `item`, or the error of its dependencies ([`deps::check`]), or of a
    /// duplicate id. An item in error never takes its id, so its children
    /// find no parent of that id.
    fn checked(&mut self, item: Item) -> Result<Item, ItemError> {
        if let Err((field, reason)) = deps::check(&item) {
            return Err(ItemError {
                path: self.items_path().to_owned(),
                line: item.line,
                field: Some(field.to_owned()),
                reason,
            });
        }
        self.unique(item)
    }

    /// `item`, or the error of a duplicate id when its id was seen before.
    fn unique(&mut self, item: Item) -> Result<Item, ItemError> {
        let hash = id_hash(&item.id);
        let first = match self.validated.get(&hash) {
            Some(&first) if first == item.line => return Ok(item),
            Some(&first) => first,
            None => match self.first_lines.entry(hash) {
                Entry::Vacant(entry) => {
                    entry.insert(item.line);
                    return Ok(item);
                }
                Entry::Occupied(entry) => *entry.get(),
            },
        };
        // A batch file's ids are its `custom_id`s or `key`s.
        let field = match self.batch() {
            Some(ProviderKind::Openai) => "custom_id",
            Some(_) => "key",
            None => "id",
        };
        Err(ItemError {
            path: self.items_path().to_owned(),
            line: item.line,
            field: Some(field.to_owned()),
            reason: format!("duplicate id `{}`, first used on line {first}", item.id),
        })
    }
}

/// What [`validate`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Records that parsed into an item with an id not used before and
    /// valid dependencies.
    pub items: u64,
    /// The first [`MAX_ERRORS`] errors, in file order.
    pub errors: Vec<ItemError>,
    /// All errors, also those beyond the list.
    pub error_count: u64,
    /// sha256 of the file's bytes (lowercase hex), to match a resumed run to
    /// the job it started from.
    pub content_hash: String,
    /// The distinct models the valid items ask for, each with the line that
    /// first asks for it, in file order; at most [`MAX_MODELS`].
    pub models: Vec<ModelUse>,
    /// The distinct pairs of a model and a generation setting used with it,
    /// each where it is first used; at most [`MAX_MODELS`]. The run checks
    /// each against the API of the model's provider.
    pub settings: Vec<SettingUse>,
    /// The provider whose own batch file the job is, if it is one: its
    /// items must go to accounts of that provider.
    pub batch: Option<ProviderKind>,
    /// The items' dependencies (`depends_on`); the errors of its invalid
    /// items are among `errors`.
    pub deps: std::sync::Arc<deps::Graph>,
    /// Where each id was first used, for a [`JobReader::validated`] that
    /// reads the file again.
    pub first_lines: Arc<FirstLines>,
}

/// A generation setting a job uses with a model, and where it first does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingUse {
    /// The items' `model`; `None` for the config's default model.
    pub model: Option<String>,
    /// The setting, as [`Generation::names`] spells it.
    pub setting: &'static str,
    /// The file of the item (a spec's data file for its rows).
    pub path: PathBuf,
    /// 1-based line of the first item using it.
    pub line: u64,
}

/// A model a job asks for, and where it first does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUse {
    /// The item's `model`; `None` for items that name none (they get the
    /// config's default model).
    pub model: Option<String>,
    /// 1-based line of the first item asking for it.
    pub line: u64,
}

/// How many distinct models [`validate`] keeps, so that a job naming a
/// different model on each of a million lines stays small in memory.
pub const MAX_MODELS: usize = 1000;

/// How many errors [`validate`] keeps; a broken million-line file must not
/// fill memory or the terminal.
pub const MAX_ERRORS: usize = 1000;

/// Validates a whole job in one streaming pass: counts items, collects item
/// errors (duplicate ids among them, see [`JobReader`]), collects the
/// models asked for and computes the content hash.
pub fn validate(path: &Path) -> Result<Validation, JobError> {
    validate_with(path, |_| {})
}

/// [`validate`], handing `each` every item [`JobReader`] yields as valid,
/// in file order, so that whoever needs them too (the run's estimate) does
/// not read the job again. Items whose dependencies turn out wrong once
/// the whole graph is known are among them, as they are among
/// [`JobReader`]'s.
pub fn validate_with(path: &Path, mut each: impl FnMut(&Item)) -> Result<Validation, JobError> {
    let mut reader = JobReader::open(path)?;
    let mut validation = Validation {
        items: 0,
        errors: Vec::new(),
        error_count: 0,
        content_hash: String::new(),
        models: Vec::new(),
        settings: Vec::new(),
        batch: None,
        deps: Default::default(),
        first_lines: Arc::default(),
    };
    let mut graph = deps::Builder::default();
    let mut models = HashSet::new();
    let mut settings = HashSet::new();
    let items_path = reader.items_path().to_owned();
    for result in &mut reader {
        match result {
            Ok(item) => {
                validation.items += 1;
                each(&item);
                graph.add(&item);
                for setting in item.generation.names() {
                    if settings.len() < MAX_MODELS && settings.insert((item.model.clone(), setting))
                    {
                        validation.settings.push(SettingUse {
                            model: item.model.clone(),
                            setting,
                            path: items_path.clone(),
                            line: item.line,
                        });
                    }
                }
                if models.len() < MAX_MODELS && models.insert(item.model.clone()) {
                    validation.models.push(ModelUse {
                        model: item.model,
                        line: item.line,
                    });
                }
            }
            Err(error) => {
                validation.error_count += 1;
                if validation.errors.len() < MAX_ERRORS {
                    validation.errors.push(error);
                }
            }
        }
    }
    if let Some(source) = reader.failure.take() {
        return Err(JobError::Read {
            path: path.to_owned(),
            source,
        });
    }
    validation.content_hash = reader.hash_so_far();
    validation.batch = reader.batch();
    let graph = graph.finish(path, &items_path, &reader.first_lines)?;
    // An item whose dependencies are wrong is not valid.
    for error in graph.errors() {
        validation.items -= 1;
        validation.error_count += 1;
        if validation.errors.len() < MAX_ERRORS {
            validation.errors.push(error);
        }
    }
    validation.deps = std::sync::Arc::new(graph);
    validation.first_lines = Arc::new(std::mem::take(&mut reader.first_lines));
    Ok(validation)
}

/// A 64-bit hash of an item id, so sets of a million ids stay small (the
/// duplicate check of [`JobReader`], the finished items of a resumed run). Only compared
/// within one process, so the unspecified-but-deterministic `DefaultHasher`
/// is enough.
pub fn id_hash(id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    id.hash(&mut hasher);
    hasher.finish()
}

/// The first 12 characters of a hex hash, for messages.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Passes reads through, hashing every byte.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
