//! The config file exactly as written: serde types that reject unknown fields
//! and check every field that can be checked on its own.
//!
//! Field-local checks (durations, URLs, `>= 1`, non-empty names) run inside
//! serde visitors on purpose: serde_yaml then attaches the field path, line and
//! column to the error. Checks that span fields (duplicates, `${ENV}`
//! expansion) run afterwards, in the parent module.

use crate::pool::Strategy;
use crate::provider::ProviderKind;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a config map with `accounts`")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub providers: BTreeMap<ProviderKind, RawProvider>,
    pub accounts: Vec<RawAccount>,
    pub model: Option<ModelName>,
    pub concurrency: Option<Positive<usize>>,
    pub timeout: Option<HumanDuration>,
    pub max_retries: Option<u32>,
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub groups: Vec<Name>,
    pub item_deadline: Option<HumanDuration>,
    pub default_max_output_tokens: Option<Positive<u32>>,
    #[serde(default)]
    pub models: BTreeMap<ModelName, RawModelRoute>,
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    pub expected_output_tokens: Option<Positive<u32>>,
    pub max_cost_per_item: Option<Usd>,
    #[serde(default)]
    pub media: RawMedia,
    pub state: Option<String>,
}

/// The `media:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMedia {
    pub inline_max_bytes: Option<u64>,
    pub poll: Option<HumanDuration>,
    pub keep_uploads: Option<bool>,
    pub on_unavailable: Option<super::OnUnavailable>,
    pub upload_concurrency: Option<Positive<usize>>,
}

/// A `models.<name>` entry: which provider serves the name, and as what.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with `provider` and `name`")]
pub(super) struct RawModelRoute {
    pub provider: ProviderKind,
    pub name: ModelName,
}

/// A `prices.<model>` entry: USD per 1M tokens.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `input`, `output` and optionally `cached_input` and `long`"
)]
pub(super) struct RawPrice {
    pub input: Usd,
    pub output: Usd,
    pub cached_input: Option<Usd>,
    pub long: Option<RawLongPrice>,
}

/// `prices.<model>.long`: the prices above a prompt size.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `above_tokens`, `input`, `output` and optionally `cached_input`"
)]
pub(super) struct RawLongPrice {
    pub above_tokens: Positive<u64>,
    pub input: Usd,
    pub output: Usd,
    pub cached_input: Option<Usd>,
}

/// A `providers.<kind>` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with `base_url`")]
pub(super) struct RawProvider {
    pub base_url: BaseUrl,
}

/// One `accounts[i]` entry.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an account map with `name` and `keys`"
)]
pub(super) struct RawAccount {
    pub name: Name,
    pub provider: Option<ProviderKind>,
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub limits: BTreeMap<String, RawLimits>,
    pub proxy: Option<ProxyUrl>,
}

/// `limits.<model>`: each limit optional, each at least 1.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `rpm`, `tpm`, `otpm` and `rpd`"
)]
pub(super) struct RawLimits {
    pub rpm: Option<Positive<u32>>,
    pub tpm: Option<Positive<u64>>,
    pub otpm: Option<Positive<u64>>,
    pub rpd: Option<Positive<u32>>,
}

/// A key entry: a bare string, or a map `{key, weight, group}`. The key is
/// still a template here (`${VAR}` not yet expanded).
#[derive(Debug)]
pub(super) struct RawKey {
    pub template: String,
    pub weight: Positive<u32>,
    pub group: Name,
}

/// The map form of a key entry; the derive gives `deny_unknown_fields` and
/// good missing-field messages for free.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyMap {
    #[serde(deserialize_with = "key_string")]
    key: String,
    weight: Option<Positive<u32>>,
    group: Option<Name>,
}

impl RawKey {
    fn new(template: String, weight: Option<Positive<u32>>, group: Option<Name>) -> Self {
        RawKey {
            template,
            weight: weight.unwrap_or(Positive(1)),
            group: group.unwrap_or_else(|| Name(super::DEFAULT_GROUP.to_owned())),
        }
    }
}

// A visitor instead of `#[serde(untagged)]`: untagged enums replace every
// inner error with "data did not match any variant", losing the field name.
impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyVisitor::<true>)
    }
}

/// `key:` of the map form: a string only.
fn key_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(deserializer.deserialize_any(KeyVisitor::<false>)?.template)
}

/// Reads a key entry; `MAP` says whether the map form is allowed here.
struct KeyVisitor<const MAP: bool>;

impl<'de, const MAP: bool> Visitor<'de> for KeyVisitor<MAP> {
    type Value = RawKey;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if MAP {
            "a key string or a map with `key`, `weight` and `group`"
        } else {
            "a key string"
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
        Ok(RawKey::new(v.to_owned(), None, None))
    }
    // serde's default message would quote the number, and a number here is a
    // key; YAML would also drop its leading zeros.
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawKey, E> {
        Err(E::custom("a numeric key must be quoted: '...'"))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawKey, E> {
        self.visit_u64(v.unsigned_abs())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawKey, A::Error> {
        if !MAP {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        let m = KeyMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(RawKey::new(m.key, m.weight, m.group))
    }
}

/// Deserializes a string and converts it with `check`, whose error message
/// becomes the field's error.
fn checked_str<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    check: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<T> {
        expecting: &'static str,
        check: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for StrVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.check)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(StrVisitor { expecting, check })
}

/// A non-empty name (account, group, model).
#[derive(Debug)]
pub(super) struct Name(pub String);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a non-empty string", |s| {
            if s.trim().is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(Name(s.to_owned()))
            }
        })
    }
}

/// A model name as the providers spell them (it goes into URLs).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ModelName(pub String);

impl<'de> Deserialize<'de> for ModelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a model name", |s| {
            crate::provider::check_model_name(s).map(|()| ModelName(s.to_owned()))
        })
    }
}

/// A provider base URL: http(s), without a trailing `/`.
#[derive(Debug)]
pub(super) struct BaseUrl(pub String);

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "an http(s) URL", |s| {
            check_url(s, &["http", "https"]).map(|u| BaseUrl(u.trim_end_matches('/').to_owned()))
        })
    }
}

/// An egress proxy URL. It may carry credentials (`http://user:pass@host`),
/// so its value is never echoed in an error.
#[derive(Debug)]
pub(super) struct ProxyUrl(pub String);

impl<'de> Deserialize<'de> for ProxyUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a proxy URL", |s| {
            check_url(s, &["http", "https", "socks5"]).map(|u| ProxyUrl(u.to_owned()))
        })
    }
}

/// Checks that `url` is `<scheme>://<host>…` with one of `schemes`. Returns
/// the trimmed URL. The message names the schemes, never the value.
fn check_url<'a>(url: &'a str, schemes: &[&str]) -> Result<&'a str, String> {
    let url = url.trim();
    let expected = || {
        let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        format!("must start with {}", list.join(" or "))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(expected)?;
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(expected());
    }
    if rest.trim_end_matches('/').is_empty() {
        return Err("has no host".to_owned());
    }
    // url's messages ("invalid IPv6 address", "invalid port number") name
    // the part, not the value.
    reqwest::Url::parse(url).map_err(|e| format!("is not a valid URL: {e}"))?;
    Ok(url)
}

/// An integer that must be at least 1.
#[derive(Debug, Clone, Copy)]
pub(super) struct Positive<T>(pub T);

impl<'de, T: TryFrom<u64>> Deserialize<'de> for Positive<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PositiveVisitor<T>(PhantomData<T>);
        impl<T: TryFrom<u64>> Visitor<'_> for PositiveVisitor<T> {
            type Value = Positive<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer >= 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v == 0 {
                    return Err(E::custom("must be at least 1, found 0"));
                }
                T::try_from(v)
                    .map(Positive)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
        }
        deserializer.deserialize_u64(PositiveVisitor(PhantomData))
    }
}

/// An amount in USD: a finite number, at least 0.
#[derive(Debug, Clone, Copy)]
pub(super) struct Usd(pub f64);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UsdVisitor;
        impl Visitor<'_> for UsdVisitor {
            type Value = Usd;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount in USD such as `0.30`")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Usd, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Usd(v))
                } else {
                    Err(E::custom(format!(
                        "must be a finite amount >= 0, found {v}"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Usd, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Usd, E> {
                self.visit_f64(v as f64)
            }
        }
        deserializer.deserialize_any(UsdVisitor)
    }
}

/// A duration written with a unit: `500ms`, `60s`, `2m`, `1h`.
#[derive(Debug)]
pub(super) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `500ms`, `60s`, `2m` or `1h`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
            // `timeout: 60` is the likeliest mistake; say what to write.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`; zero is refused
/// because every duration in the config is a timeout or an interval.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("invalid duration `{text}`: write e.g. `500ms`, `60s`, `2m` or `1h`");
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => {
            return Err(format!(
                "a duration needs a unit: write `{n}s` (or ms, m, h)"
            ))
        }
        _ => return Err(invalid()),
    };
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}
