//! OpenAI chat completions adapter.

use super::{ApiError, Reply, Request};
use crate::pool::ApiKey;

pub(super) async fn generate(
    _http: &reqwest::Client,
    _base_url: &str,
    _key: &ApiKey,
    _req: &Request<'_>,
) -> Result<Reply, ApiError> {
    unimplemented!("openai adapter")
}
