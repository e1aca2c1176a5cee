//! The history of a tenant's policies: who saved what, when and why, a page at a time.
//! Rollback is a Save (see [`super::save`]).

use super::{App, AppError};
use crate::policy::Caller;
use crate::policy::names::FieldError;
use crate::store::{RevisionQuery, RevisionRecord};

/// A page of history.
#[derive(Debug, Clone)]
pub struct RevisionPage {
    pub revisions: Vec<RevisionRecord>,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl App {
    /// The caller's tenant's revisions, newest first, optionally only those that changed a
    /// tool of `integration`. Pages are stable while Saves continue: a token holds the
    /// last revision of its page, and the next page starts below it.
    pub async fn list_revisions(
        &self,
        caller: &Caller,
        integration: Option<String>,
        page_size: u32,
        page_token: &str,
    ) -> Result<RevisionPage, AppError> {
        let before = decode_page_token(page_token)?;
        let limit = match page_size {
            0 => 50,
            n => n.min(500),
        };
        let query = RevisionQuery {
            integration,
            before,
            limit,
        };
        let revisions = self.store.list_revisions(&caller.tenant, &query).await?;
        let next_page_token = match revisions.last() {
            Some(last) if revisions.len() == limit as usize && last.revision > 1 => {
                encode_page_token(last.revision)
            }
            _ => String::new(),
        };
        Ok(RevisionPage {
            revisions,
            next_page_token,
        })
    }
}

/// Opaque to clients; inside, the revision the next page starts below. Revisions are
/// numbered per tenant, so a token says nothing of other tenants.
fn encode_page_token(before: u64) -> String {
    format!("r1.{before}")
}

fn decode_page_token(token: &str) -> Result<Option<u64>, FieldError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("r1.")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n >= 1)
        .map(Some)
        .ok_or_else(|| FieldError::new("page_token", "is not a token from ListRevisions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_anything_else() {
        assert_eq!(decode_page_token(&encode_page_token(7)), Ok(Some(7)));
        assert_eq!(decode_page_token(""), Ok(None));
        for forged in [
            "7",
            "r1.",
            "r1.-3",
            "r1.0",
            "r1.+4",
            "r2.5",
            "r1.99999999999999999999",
        ] {
            let e = decode_page_token(forged).unwrap_err();
            assert_eq!(e.field, "page_token", "{forged}");
        }
    }
}
