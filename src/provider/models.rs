//! Model lists: the models an endpoint serves, so that a job's models are
//! checked before anything is sent. Listing is free on both APIs.
//!
//! - Gemini: `GET {base_url}/v1beta/models?pageSize=1000`, key in
//!   `x-goog-api-key`. The answer is `{"models": [{"name": "models/ID",
//!   "supportedGenerationMethods": ["generateContent", ...], ...}],
//!   "nextPageToken": "..."}`; the token is passed back as `pageToken`, and
//!   its absence marks the last page; `pageSize` is at most 1000
//!   (<https://ai.google.dev/api/models#method:-models.list>).
//! - OpenAI: `GET {base_url}/v1/models` (the base URL convention of the
//!   adapter), `Authorization: Bearer KEY`. The answer is `{"object":
//!   "list", "data": [{"id": "gpt-4o-mini", "object": "model", ...}]}`
//!   (<https://platform.openai.com/docs/api-reference/models/list>).
//! - Anthropic: `GET {base_url}/v1/models?limit=1000`, `x-api-key` and
//!   `anthropic-version`. The answer is `{"data": [{"id": "claude-...",
//!   "type": "model", "display_name": ..., "created_at": ...}], "has_more":
//!   bool, "first_id": ..., "last_id": ...}`; the next page is asked with
//!   `after_id` = `last_id` (<https://docs.anthropic.com/en/api/models-list>).

use super::common::{self, api_error};
use super::transport::get;
use super::{anthropic, gemini, openai, ApiError, Client, ErrorClass, ProviderKind};
use crate::types::ApiKey;
use serde::Deserialize;

/// Pages of a Gemini list read at most: a server that keeps answering with
/// a next page must not keep keyfan listing forever.
const MAX_PAGES: usize = 100;

/// Gemini's largest page.
const PAGE_SIZE: u32 = 1000;

/// A page of Gemini's list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiPage {
    #[serde(default)]
    models: Vec<GeminiModel>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiModel {
    name: String,
    /// Absent on some gateways: then the model is taken as generating.
    #[serde(default)]
    supported_generation_methods: Option<Vec<String>>,
}

/// OpenAI's list.
#[derive(Debug, Deserialize)]
struct OpenaiList {
    data: Vec<OpenaiModel>,
}

#[derive(Debug, Deserialize)]
struct OpenaiModel {
    id: String,
}

/// A page of Anthropic's list.
#[derive(Debug, Deserialize)]
struct AnthropicPage {
    data: Vec<OpenaiModel>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

impl Client {
    /// The ids of the models this endpoint serves to `key`, as a job names
    /// them (Gemini's without the `models/` prefix, and only those that
    /// support `generateContent`).
    pub async fn list_models(&self, key: &ApiKey) -> Result<Vec<String>, ApiError> {
        let result = match self.kind {
            ProviderKind::Gemini => gemini_models(self, key).await,
            ProviderKind::Openai => openai::list_models(self, key)
                .await
                .and_then(|body| parse_openai(&body)),
            ProviderKind::Anthropic => anthropic_models(self, key).await,
        };
        super::without_key(result, key)
    }
}

async fn gemini_models(client: &Client, key: &ApiKey) -> Result<Vec<String>, ApiError> {
    let base = format!("{}/v1beta/models", client.base_url);
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = common::url(&base)?;
        url.query_pairs_mut()
            .append_pair("pageSize", &PAGE_SIZE.to_string());
        if let Some(token) = &token {
            url.query_pairs_mut().append_pair("pageToken", token);
        }
        let body = get(
            client,
            url.as_str(),
            "x-goog-api-key",
            key.expose(),
            gemini::classify_answer,
        )
        .await?;
        let page = parse_gemini(&body)?;
        ids.extend(page.models.into_iter().filter_map(generating_id));
        match page.next_page_token {
            Some(next) if !next.is_empty() && token.as_deref() != Some(next.as_str()) => {
                token = Some(next)
            }
            _ => return Ok(ids),
        }
    }
    Err(too_many_pages())
}

async fn anthropic_models(client: &Client, key: &ApiKey) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let body = anthropic::list_models(client, key, after.as_deref()).await?;
        let page: AnthropicPage = serde_json::from_slice(&body).map_err(|e| malformed(&e))?;
        ids.extend(page.data.into_iter().map(|m| m.id));
        match page.last_id {
            Some(last) if page.has_more && after.as_deref() != Some(last.as_str()) => {
                after = Some(last)
            }
            _ => return Ok(ids),
        }
    }
    Err(too_many_pages())
}

/// A list that goes on past [`MAX_PAGES`]: a partial list would refuse the
/// models of the pages not read.
fn too_many_pages() -> ApiError {
    api_error(
        ErrorClass::Transient,
        Some(200),
        format!("the model list goes on past {MAX_PAGES} pages"),
    )
}

/// The id of a Gemini model that can `generateContent`.
fn generating_id(model: GeminiModel) -> Option<String> {
    let generates = model
        .supported_generation_methods
        .is_none_or(|methods| methods.iter().any(|m| m == "generateContent"));
    let id = model.name.strip_prefix("models/").unwrap_or(&model.name);
    generates.then(|| id.to_owned())
}

fn parse_gemini(body: &[u8]) -> Result<GeminiPage, ApiError> {
    serde_json::from_slice(body).map_err(|e| malformed(&e))
}

fn parse_openai(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let list: OpenaiList = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

fn malformed(error: &serde_json::Error) -> ApiError {
    api_error(
        ErrorClass::Transient,
        Some(200),
        format!("the model list is not the API's shape: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_pages_keep_generating_models_without_their_prefix() {
        let page = parse_gemini(
            br#"{"models":[
                {"name":"models/gemini-2.5-flash","version":"001","supportedGenerationMethods":["generateContent","countTokens"]},
                {"name":"models/text-embedding-004","supportedGenerationMethods":["embedContent"]},
                {"name":"models/gemma-3-27b-it"}
            ],"nextPageToken":"abc"}"#,
        )
        .unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("abc"));
        let ids: Vec<String> = page.models.into_iter().filter_map(generating_id).collect();
        assert_eq!(ids, ["gemini-2.5-flash", "gemma-3-27b-it"]);
    }

    #[tokio::test]
    async fn a_gemini_list_is_read_to_its_last_page() {
        use crate::sim::{SimConfig, SimServer};
        let models: Vec<String> = (0..1001).map(|i| format!("gemini-m{i:04}")).collect();
        let config = SimConfig {
            models: Some(models.clone()),
            projects: vec![crate::sim::ProjectConfig {
                name: "p".into(),
                keys: vec![ApiKey::new("k")],
                limits: Default::default(),
            }],
            ..SimConfig::default()
        };
        let server = SimServer::start(config, ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let client = Client::new(
            ProviderKind::Gemini,
            &server.base_url(),
            std::time::Duration::from_secs(5),
            None,
        )
        .unwrap();
        assert_eq!(client.list_models(&ApiKey::new("k")).await.unwrap(), models);
        assert_eq!(server.stats().model_lists, 2, "pages of 1000");
        let refused = client.list_models(&ApiKey::new("nope")).await.unwrap_err();
        assert!(
            matches!(refused.class, ErrorClass::KeyInvalid { .. }),
            "{refused:?}"
        );
    }

    #[test]
    fn openai_lists_their_ids() {
        let ids = parse_openai(
            br#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1686935002,"owned_by":"system"}]}"#,
        )
        .unwrap();
        assert_eq!(ids, ["gpt-4o-mini"]);
        assert!(parse_openai(b"<html>").is_err());
    }
}
