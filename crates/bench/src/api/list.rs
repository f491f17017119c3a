//! LIST of a large collection: in one answer, and in pages of `limit` following the
//! `continue` tokens as kubectl does (500 a page by default). Each timing runs from the
//! first request to the last answer read and decoded (items skipped over, not built), so
//! both include the same client-side work.

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::client::Client;

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<IgnoredAny>,
    metadata: PageMeta,
}

#[derive(Debug, Deserialize)]
struct PageMeta {
    #[serde(rename = "continue", default)]
    next: Option<String>,
}

/// Lists `collection` (a path), whole or in pages of `limit`; returns the time taken and
/// the number of items.
pub async fn list(
    client: &Client,
    collection: &str,
    limit: Option<usize>,
) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let mut items = 0;
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match (limit, &next) {
            (None, _) => collection.to_owned(),
            (Some(l), None) => format!("{collection}?limit={l}"),
            (Some(l), Some(token)) => {
                format!("{collection}?limit={l}&continue={}", query_escape(token))
            }
        };
        let page: Page = client.get(&path).await?;
        items += page.items.len();
        pages += 1;
        next = page.metadata.next.filter(|t| !t.is_empty());
        if next.is_none() {
            break;
        }
        ensure!(
            limit.is_some(),
            "an unlimited list answered with a continue token"
        );
        ensure!(pages <= 1_000_000, "the list does not end");
    }
    Ok((started.elapsed(), items))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_are_escaped() {
        assert_eq!(query_escape("eyJy+/w=="), "eyJy%2B%2Fw%3D%3D");
        assert_eq!(query_escape("a-b_c.d~"), "a-b_c.d~");
    }
}
