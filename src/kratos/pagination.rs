//! Pagination: Kratos lists answer with an RFC 8288 `Link` header whose `rel="next"` entry
//! carries the next `page_token`; it is absent on the last page. The URLs in it are relative
//! (built from the request path), so the client takes only the token and keeps its own base URL,
//! which also works behind a path-prefixing proxy.

use futures::{Stream, StreamExt, TryStreamExt, stream};
use url::Url;

use super::error::Error;

/// The default page size of identity lists (the largest every Kratos version accepts).
pub const DEFAULT_IDENTITY_PAGE_SIZE: u32 = 500;

/// One page of a list, and the token of the next page (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in server order.
    pub items: Vec<T>,
    /// Pass this as `page_token` to fetch the next page.
    pub next_page_token: Option<String>,
    /// How many items the whole list holds (`X-Total-Count`), when the server says.
    pub total: Option<u64>,
}

/// The target of the first `Link` entry with relation `rel` (relations compare
/// case-insensitively; an entry may list several space-separated relations).
pub fn link_target<'a>(header: &'a str, rel: &str) -> Option<&'a str> {
    let mut rest = header;
    loop {
        let open = rest.find('<')?;
        let close = open + rest[open..].find('>')?;
        let target = &rest[open + 1..close];
        let after = &rest[close + 1..];
        // Parameters run to the comma (outside quotes) that ends the entry.
        let comma = entry_end(after);
        let params = &after[..comma.unwrap_or(after.len())];
        if params.split(';').any(|param| has_rel(param, rel)) {
            return Some(target);
        }
        rest = &after[comma? + 1..];
    }
}

fn entry_end(after_target: &str) -> Option<usize> {
    let mut in_quotes = false;
    for (i, c) in after_target.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn has_rel(param: &str, rel: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("rel")
        && value
            .trim()
            .trim_matches('"')
            .split_ascii_whitespace()
            .any(|r| r.eq_ignore_ascii_case(rel))
}

/// The `page_token` of the `rel="next"` link, resolving relative targets against `request_url`.
/// `None` when there is no next link, or it has no `page_token`.
pub fn next_page_token(link_header: Option<&str>, request_url: &Url) -> Option<String> {
    let target = link_target(link_header?, "next")?;
    let url = request_url.join(target).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "page_token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
}

/// A stream of the items of every page: `fetch` gets the page of a token (`None` first) and
/// the stream follows `next_page_token` until it is absent, the page is empty, or the token
/// repeats (an error).
pub(crate) fn paged<T, F, Fut>(
    first_token: Option<String>,
    fetch: F,
) -> impl Stream<Item = Result<T, Error>> + Send + 'static
where
    T: Send + 'static,
    F: Fn(Option<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T>, Error>> + Send + 'static,
{
    struct State<F> {
        fetch: F,
        token: Option<String>,
        done: bool,
    }
    stream::try_unfold(
        State {
            fetch,
            token: first_token,
            done: false,
        },
        |mut state| async move {
            if state.done {
                return Ok(None);
            }
            let page = (state.fetch)(state.token.clone()).await?;
            // Kratos' offset ("migration") pagination (identity sessions, schemas) announces a next
            // page even after the last one, so an empty page ends the list too.
            if page.items.is_empty() {
                return Ok(None);
            }
            match page.next_page_token {
                Some(next) if state.token.as_deref() == Some(next.as_str()) => {
                    return Err(Error::Unexpected {
                        status: 200,
                        body_excerpt: "the next page token repeats the current one".into(),
                    });
                }
                Some(next) => state.token = Some(next),
                None => state.done = true,
            }
            Ok(Some((page.items, state)))
        },
    )
    .map_ok(|items| stream::iter(items.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kratos_keyset_link_header_yields_the_next_token() {
        let header = "</admin/identities?page_size=5&page_token=00000000-0000-0000-0000-000000000000>; rel=\"first\",</admin/identities?page_size=5&page_token=0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b>; rel=\"next\"";
        let base = Url::parse("http://127.0.0.1:4434/admin/identities?page_size=5").unwrap();
        assert_eq!(
            next_page_token(Some(header), &base).as_deref(),
            Some("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(
            link_target(header, "first"),
            Some("/admin/identities?page_size=5&page_token=00000000-0000-0000-0000-000000000000")
        );
    }

    #[test]
    fn last_page_has_no_next() {
        let header = "</admin/identities?page_size=5&page_token=00000000-0000-0000-0000-000000000000>; rel=\"first\"";
        let base = Url::parse("http://kratos/admin/identities").unwrap();
        assert_eq!(next_page_token(Some(header), &base), None);
        assert_eq!(next_page_token(None, &base), None);
        assert_eq!(next_page_token(Some(""), &base), None);
        assert_eq!(next_page_token(Some("garbage"), &base), None);
    }

    #[test]
    fn absolute_urls_spaces_unquoted_and_multiple_relations_are_understood() {
        let header = r#"<https://x.example/a?page_token=abc%3D%3D&x=1>; title="a, b"; rel="prev next" , <https://x.example/a?page_token=zzz>; rel=last"#;
        let base = Url::parse("https://x.example/a").unwrap();
        assert_eq!(
            next_page_token(Some(header), &base).as_deref(),
            Some("abc==")
        );
        assert_eq!(
            link_target(header, "LAST"),
            Some("https://x.example/a?page_token=zzz")
        );
        assert_eq!(link_target(header, "first"), None);
    }

    #[test]
    fn migration_pagination_links_are_understood() {
        let header = "</admin/identities/x/sessions?page=1&page_size=2&page_token=eyJvZmZzZXQiOiIyIiwidiI6Mn0&per_page=2>; rel=\"next\",</admin/identities/x/sessions?page=0&page_size=2&page_token=eyJvZmZzZXQiOiIwIiwidiI6Mn0&per_page=2>; rel=\"first\"";
        let base = Url::parse("http://127.0.0.1:1/admin/identities/x/sessions").unwrap();
        assert_eq!(
            next_page_token(Some(header), &base).as_deref(),
            Some("eyJvZmZzZXQiOiIyIiwidiI6Mn0")
        );
    }
}
