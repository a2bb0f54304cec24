//! `keyfan estimate --count-tokens`: the exact input tokens of each item,
//! from the API's free token count (Gemini's `countTokens`), asked through
//! the attempt loop so the counts stay within the accounts' limits and fail
//! over like any request. Providers without a free count keep the
//! heuristic for their items. The Developer API counts only the prompt's
//! `contents` (it rejects a system instruction there: googleapis/python-genai
//! `_CountTokensConfig_to_mldev`), so an item's system instruction and
//! earlier turns keep the heuristic. Media are not sent to be counted (that
//! would upload them first): an item's media keep the estimate of
//! [`super::media_tokens`].

use crate::config::Config;
use crate::job::{Item, JobError, JobReader};
use crate::pool::Need;
use crate::provider::Request;
use crate::run::{CallError, Caller, CallerError, RetryPolicy};
use crate::types::ProviderKind;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Exact input tokens by the item's job line.
pub type Counts = HashMap<u64, u64>;

/// Why the items could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// The job cannot be read.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The pool or the clients cannot be built from the config.
    #[error(transparent)]
    Caller(#[from] CallerError),
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
}

/// Counts the input tokens of every valid item of the job at `path` whose
/// model a Gemini account serves, `config.concurrency` at a time. Only
/// counts are asked for: nothing is generated.
pub async fn count_tokens(path: &Path, config: &Config) -> Result<Counts, CountError> {
    let caller = Caller::new(config, config.strategy, RetryPolicy::default())?;
    let serves_gemini = |model: &str| {
        ProviderKind::serving(model, |p| config.accounts.iter().any(|a| a.provider == p))
            == Some(ProviderKind::Gemini)
    };
    let items = JobReader::open(path)?
        .filter_map(Result::ok)
        .filter(|item| serves_gemini(item.model.as_deref().unwrap_or(&config.model)));
    let caller = &caller;
    let mut counted = futures_util::stream::iter(items)
        .map(|item| async move {
            let count = count_one(caller, &item, &config.model).await;
            (item.line, count)
        })
        .buffer_unordered(config.concurrency.max(1));
    let mut counts = Counts::new();
    while let Some((line, count)) = counted.next().await {
        let tokens = count.map_err(|error| CountError::Item {
            path: path.display().to_string(),
            line,
            error,
        })?;
        counts.insert(line, tokens);
    }
    Ok(counts)
}

/// The API's count of `item`'s prompt, plus the heuristic for its system
/// instruction and earlier turns.
async fn count_one(caller: &Caller, item: &Item, default_model: &str) -> Result<u64, CallError> {
    let model = item.model.as_deref().unwrap_or(default_model);
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
    let estimated = super::item_tokens(item, model);
    let need = Need::new(model, estimated);
    let stop = CancellationToken::new();
    let counted = caller
        .call(
            need,
            &stop,
            |client, key| {
                let request = request.clone();
                async move { client.count_tokens(&key, &request).await }
            },
            |_, _| {},
        )
        .await?;
    Ok(counted + estimated - super::estimate_tokens(&item.prompt))
}
