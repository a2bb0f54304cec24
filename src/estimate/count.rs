//! `keyfan estimate --count-tokens`: the exact input tokens of each item,
//! from the API's free token count (Gemini's `countTokens`), asked through
//! the attempt loop so the counts stay within the accounts' limits and fail
//! over like any request. Providers without a free count keep the
//! heuristic for their items. The Developer API counts only the prompt's
//! `contents` (it rejects a system instruction or a generation config
//! there: googleapis/python-genai `_CountTokensConfig_to_mldev`), so an
//! item's system instruction and earlier turns keep the heuristic.
//!
//! An item's media are counted with it, sent as the run sends them: small
//! files inline, larger ones uploaded first through the Files API under the
//! account that counts (the run's upload machinery, [`crate::run::Detached`]),
//! each distinct file once per account. The uploads are remembered in the
//! state file, so the run that follows reuses them instead of uploading
//! again. An item with a `media_resolution` keeps the estimate of
//! [`super::media_tokens`] for its media: a count cannot say the
//! resolution, so the API would count them at the default one.

use super::tokens::text_tokens;
use crate::config::Config;
use crate::job::{Item, JobError, JobReader};
use crate::pool::Need;
use crate::provider::Request;
use crate::run::{
    CallError, Caller, CallerError, Detached, RetryPolicy, Slot, UploadTally, Uploads,
};
use crate::store::StoreError;
use crate::types::ProviderKind;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exact input tokens by the item's job line.
pub type Counts = HashMap<u64, u64>;

/// Items whose media the API counted, and what counting them uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MediaCounted {
    /// Items whose media were counted by the API.
    pub items: u64,
    /// Files uploaded to be counted, their bytes, and earlier uploads reused.
    #[serde(flatten)]
    pub uploads: UploadTally,
}

/// Why the items could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// The job cannot be read.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The pool or the clients cannot be built from the config.
    #[error(transparent)]
    Caller(#[from] CallerError),
    /// The state file, which remembers the uploads, cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API refused to count an item.
    #[error("{path}:{line}: the API did not count the item's tokens: {error}")]
    Item {
        /// The job file.
        path: String,
        /// The item's line.
        line: u64,
        /// Why.
        error: CallError,
    },
    /// An item's media file could not be read since it was validated.
    #[error("{path}:{line}: {error}")]
    Media {
        /// The job file.
        path: String,
        /// The item's line.
        line: u64,
        /// Which file, and why.
        error: String,
    },
}

/// Whether `--count-tokens` sends `item`'s media to be counted: it has
/// some, and no `media_resolution` (which a count cannot carry).
pub(super) fn counts_media(item: &Item) -> bool {
    !item.media.is_empty() && item.generation.media_resolution.is_none()
}

/// Counts the input tokens of every valid item of the job at `path` whose
/// model a Gemini account serves, `config.concurrency` at a time. Only
/// counts are asked for: nothing is generated. Media files too large to go
/// inline are uploaded first, and remembered in the state file at `state`
/// (created if need be) for the run to reuse.
pub async fn count_tokens(
    path: &Path,
    config: &Config,
    state: &Path,
) -> Result<(Counts, MediaCounted), CountError> {
    let caller = Caller::new(config, config.strategy, RetryPolicy::default())?;
    let media = Detached::open(config.media, Arc::clone(caller.pool()), state)?;
    let serves_gemini = |model: &str| {
        ProviderKind::serving(model, |p| config.accounts.iter().any(|a| a.provider == p))
            == Some(ProviderKind::Gemini)
    };
    let items = JobReader::open(path)?
        .filter_map(Result::ok)
        .filter(|item| serves_gemini(item.model.as_deref().unwrap_or(&config.model)));
    let (caller, uploads) = (&caller, media.uploads());
    let mut counted = futures_util::stream::iter(items)
        .map(|item| async move {
            let count = count_one(caller, uploads, &item, &config.model).await;
            (item.line, counts_media(&item), count)
        })
        .buffer_unordered(config.concurrency.max(1));
    let mut counts = Counts::new();
    let mut media_items = 0;
    let at = |line| (path.display().to_string(), line);
    while let Some((line, with_media, count)) = counted.next().await {
        let tokens = match count {
            Ok(tokens) => tokens,
            Err(Failed::Call(error)) => {
                let (path, line) = at(line);
                return Err(CountError::Item { path, line, error });
            }
            Err(Failed::Media(error)) => {
                let (path, line) = at(line);
                return Err(CountError::Media { path, line, error });
            }
        };
        counts.insert(line, tokens);
        media_items += u64::from(with_media);
    }
    drop(counted);
    let uploads = media.finish()?;
    Ok((
        counts,
        MediaCounted {
            items: media_items,
            uploads,
        },
    ))
}

/// Why one item was not counted.
enum Failed {
    Call(CallError),
    Media(String),
}

/// The API's count of `item`'s prompt (and media, see [`counts_media`]),
/// plus the heuristic for its system instruction and earlier turns (and
/// the rule for media not counted).
async fn count_one(
    caller: &Caller,
    uploads: &Uploads,
    item: &Item,
    default_model: &str,
) -> Result<u64, Failed> {
    let model = item.model.as_deref().unwrap_or(default_model);
    let slots: Vec<Slot> = match counts_media(item) {
        true => uploads.prepare(item).await.map_err(Failed::Media)?,
        false => Vec::new(),
    };
    let request = Request {
        model,
        prompt: &item.prompt,
        system: item.system.as_deref(),
        max_output_tokens: None,
        temperature: None,
        turns: &item.turns,
        generation: &item.generation,
        media: &[],
    };
    let (text, media) = (text_tokens(item), super::media_tokens(item, model).tokens);
    let mut need = Need::new(model, text + media);
    // A file already uploaded under an account is counted with its keys.
    if let Some(account) = uploads.pin(&slots) {
        need = need.pinned(account);
    }
    let stop = CancellationToken::new();
    let slots = &slots;
    let counted = caller
        .call(
            need,
            &stop,
            |client, key| {
                let request = request.clone();
                async move {
                    match slots.is_empty() {
                        true => client.count_tokens(&key, &request).await,
                        false => uploads.count(slots, &client, &key, &request).await,
                    }
                }
            },
            |_, _| {},
        )
        .await
        .map_err(Failed::Call)?;
    let uncounted_media = match counts_media(item) {
        true => 0,
        false => media,
    };
    Ok(counted + text - super::estimate_tokens(&item.prompt) + uncounted_media)
}
