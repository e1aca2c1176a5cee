//! The tamper-evidence rule for a tenant's history: each saved revision is a record in a
//! hash chain.
//!
//! A revision's **record** is a JSON object: `tenant`, `revision`, `kind`, `actor_key_id`,
//! `saved_at_ms` (Unix milliseconds), `comment`, and `changes`, one object per tool it
//! changed, sorted by integration then name: `integration_id`, `name`, `removed`, and for a
//! tool that was not removed its whole state after the revision (`description`,
//! `input_schema_json`, the four hints as booleans or null, `policy`, `manager_approval`,
//! `source`, `source_reason`). Its **hash** is the lowercase hex SHA-256 of the previous
//! revision's hash, a newline, and the record in RFC 8785 canonical form; the first
//! revision's previous hash is 64 zeros. Anyone holding an export can check it.

use super::canonical::{self, Json};
use super::{Tool, ToolChange};
use sha2::{Digest, Sha256};

/// The previous hash of a tenant's first revision.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a revision row holds besides its tool changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionHead<'a> {
    pub tenant: &'a str,
    pub revision: u64,
    pub kind: &'a str,
    pub actor_key_id: &'a str,
    pub saved_at_ms: i64,
    pub comment: &'a str,
}

/// The record of a revision, as hashed and exported.
pub fn record(head: &RevisionHead<'_>, changes: &[ToolChange]) -> Json {
    let mut sorted: Vec<&ToolChange> = changes.iter().collect();
    sorted.sort_by(|a, b| a.key().cmp(&b.key()));
    let text = |s: &str| Json::String(s.to_owned());
    Json::Object(vec![
        ("tenant".into(), text(head.tenant)),
        ("revision".into(), Json::Number(head.revision as f64)),
        ("kind".into(), text(head.kind)),
        ("actor_key_id".into(), text(head.actor_key_id)),
        ("saved_at_ms".into(), Json::Number(head.saved_at_ms as f64)),
        ("comment".into(), text(head.comment)),
        (
            "changes".into(),
            Json::Array(sorted.into_iter().map(change).collect()),
        ),
    ])
}

fn change(c: &ToolChange) -> Json {
    let (integration_id, name) = c.key();
    let mut fields = vec![
        ("integration_id".into(), Json::String(integration_id.into())),
        ("name".into(), Json::String(name.into())),
        (
            "removed".into(),
            Json::Bool(matches!(c, ToolChange::Remove { .. })),
        ),
    ];
    if let ToolChange::Upsert(tool) = c {
        fields.extend(state(tool));
    }
    Json::Object(fields)
}

fn state(t: &Tool) -> Vec<(String, Json)> {
    let hint = |h: Option<bool>| h.map_or(Json::Null, Json::Bool);
    let text = |s: &str| Json::String(s.to_owned());
    vec![
        ("description".into(), text(&t.description)),
        ("input_schema_json".into(), text(&t.input_schema_json)),
        ("read_only_hint".into(), hint(t.annotations.read_only)),
        ("destructive_hint".into(), hint(t.annotations.destructive)),
        ("idempotent_hint".into(), hint(t.annotations.idempotent)),
        ("open_world_hint".into(), hint(t.annotations.open_world)),
        ("policy".into(), text(t.policy.as_str())),
        ("manager_approval".into(), Json::Bool(t.manager_approval)),
        ("source".into(), text(t.source.as_str())),
        ("source_reason".into(), text(&t.source_reason)),
    ]
}

/// The hash of a record that follows `previous`.
pub fn chain_hash(previous: &str, record: &Json) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical::canonicalize(record).as_bytes());
    canonical::hex(&hasher.finalize())
}

/// A stored revision, as `verify` reads it.
#[derive(Debug, Clone)]
pub struct Stored<'a> {
    pub head: RevisionHead<'a>,
    pub changes: &'a [ToolChange],
    /// Empty for a revision saved before chains were recorded.
    pub hash: &'a str,
}

/// A chain that holds: how many revisions it covers, how many came before it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub chained: usize,
    pub before_chain: usize,
}

/// The first record that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub revision: u64,
    pub problem: String,
}

/// Checks a tenant's revisions, oldest first, up to the tenant's revision `last`: numbered
/// 1, 2, … without a gap, and each hash recomputed from its record and the hash before it.
/// Revisions saved before chains were recorded (no hash) may only come first.
pub fn verify<'a>(
    revisions: impl IntoIterator<Item = Stored<'a>>,
    last: u64,
) -> Result<Verified, Break> {
    let mut previous = GENESIS.to_owned();
    let mut verified = Verified {
        chained: 0,
        before_chain: 0,
    };
    let mut expected = 1;
    for stored in revisions {
        let revision = stored.head.revision;
        if revision != expected {
            return Err(Break {
                revision: expected,
                problem: format!(
                    "is missing (the history goes from {} to {revision})",
                    expected - 1
                ),
            });
        }
        expected += 1;
        if stored.hash.is_empty() {
            if verified.chained > 0 {
                return Err(Break {
                    revision,
                    problem: "has no hash, but revisions before it do".into(),
                });
            }
            verified.before_chain += 1;
            continue;
        }
        let computed = chain_hash(&previous, &record(&stored.head, stored.changes));
        if computed != stored.hash {
            return Err(Break {
                revision,
                problem: format!(
                    "does not match its record and the revision before it (stored {}, \
                     recomputed {computed})",
                    stored.hash
                ),
            });
        }
        previous = computed;
        verified.chained += 1;
    }
    if expected <= last {
        return Err(Break {
            revision: expected,
            problem: format!("is missing (the tenant is at revision {last})"),
        });
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Annotations, Policy, PolicySource};

    fn head() -> RevisionHead<'static> {
        RevisionHead {
            tenant: "acme",
            revision: 2,
            kind: "set_policy",
            actor_key_id: "0123456789abcdef",
            saved_at_ms: 1_764_900_000_000,
            comment: "ticket 4711",
        }
    }

    fn tool(name: &str) -> Tool {
        Tool {
            integration_id: "entra".into(),
            name: name.into(),
            description: "Resets a password.".into(),
            input_schema_json: "{}".into(),
            annotations: Annotations {
                destructive: Some(true),
                ..Annotations::default()
            },
            policy: Policy::Disabled,
            manager_approval: false,
            source: PolicySource::Admin,
            source_reason: "set by an admin".into(),
            revision: 2,
        }
    }

    /// The rule as documented: pinned, so a change to it is a deliberate one.
    #[test]
    fn the_record_and_its_hash_are_as_documented() {
        let changes = vec![
            ToolChange::Upsert(tool("reset_password")),
            ToolChange::Remove {
                integration_id: "entra".into(),
                name: "delete_user".into(),
            },
        ];
        let record = record(&head(), &changes);
        assert_eq!(
            canonical::canonicalize(&record),
            r#"{"actor_key_id":"0123456789abcdef","changes":[{"integration_id":"entra","name":"delete_user","removed":true},{"description":"Resets a password.","destructive_hint":true,"idempotent_hint":null,"input_schema_json":"{}","integration_id":"entra","manager_approval":false,"name":"reset_password","open_world_hint":null,"policy":"disabled","read_only_hint":null,"removed":false,"source":"admin","source_reason":"set by an admin"}],"comment":"ticket 4711","kind":"set_policy","revision":2,"saved_at_ms":1764900000000,"tenant":"acme"}"#
        );
        let expected = {
            let mut h = Sha256::new();
            h.update(GENESIS.as_bytes());
            h.update(b"\n");
            h.update(canonical::canonicalize(&record).as_bytes());
            canonical::hex(&h.finalize())
        };
        assert_eq!(chain_hash(GENESIS, &record), expected);
        assert_ne!(chain_hash(&expected, &record), expected, "the chain links");
    }

    #[test]
    fn verify_names_the_first_record_that_does_not_hold() {
        let heads: Vec<RevisionHead> = (1..=3)
            .map(|revision| RevisionHead { revision, ..head() })
            .collect();
        let mut hashes = Vec::new();
        let mut previous = GENESIS.to_owned();
        for h in &heads {
            previous = chain_hash(&previous, &record(h, &[]));
            hashes.push(previous.clone());
        }
        let stored = |heads: &[RevisionHead<'static>],
                      hashes: &[String]|
         -> Vec<(RevisionHead<'static>, String)> {
            heads.iter().cloned().zip(hashes.iter().cloned()).collect()
        };
        let check = |rows: &[(RevisionHead<'static>, String)], last| {
            verify(
                rows.iter().map(|(head, hash)| Stored {
                    head: head.clone(),
                    changes: &[],
                    hash,
                }),
                last,
            )
        };
        let good = stored(&heads, &hashes);
        assert_eq!(
            check(&good, 3),
            Ok(Verified {
                chained: 3,
                before_chain: 0
            })
        );
        let mut edited = good.clone();
        edited[1].0.comment = "edited";
        assert_eq!(check(&edited, 3).unwrap_err().revision, 2);
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert_eq!(check(&swapped, 3).unwrap_err().revision, 1);
        let gap = vec![good[0].clone(), good[2].clone()];
        assert_eq!(check(&gap, 3).unwrap_err().revision, 2);
        let cut = good[..2].to_vec();
        assert_eq!(check(&cut, 3).unwrap_err().revision, 3);
        let mut blanked = good.clone();
        blanked[2].1 = String::new();
        assert_eq!(check(&blanked, 3).unwrap_err().revision, 3);
    }

    #[test]
    fn any_change_to_a_record_changes_its_hash() {
        let base = chain_hash(GENESIS, &record(&head(), &[]));
        let mut other = head();
        other.comment = "ticket 4712";
        assert_ne!(chain_hash(GENESIS, &record(&other, &[])), base);
        let with_tool = record(&head(), &[ToolChange::Upsert(tool("x"))]);
        assert_ne!(chain_hash(GENESIS, &with_tool), base);
    }
}
