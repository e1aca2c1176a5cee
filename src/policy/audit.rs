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
    /// The record's number: a revision, or an approval event's place in its chain.
    pub at: u64,
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
                at: expected,
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
                    at: revision,
                    problem: "has no hash, but revisions before it do".into(),
                });
            }
            verified.before_chain += 1;
            continue;
        }
        let computed = chain_hash(&previous, &record(&stored.head, stored.changes));
        if computed != stored.hash {
            return Err(Break {
                at: revision,
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
            at: expected,
            problem: format!("is missing (the tenant is at revision {last})"),
        });
    }
    Ok(verified)
}

/// An approval event as its tenant's second chain covers it: the event's row, its place in
/// the chain, and its approval's head (which never changes), each column as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalEvent {
    pub tenant: String,
    /// Its place in the tenant's chain of approval events: 1, 2, … in commit order.
    pub seq: u64,
    pub approval_id: String,
    pub version: i64,
    pub state: String,
    /// The roles still asked for, comma-separated.
    pub required_roles: String,
    pub consumed_by_request: Option<String>,
    /// Every step so far, as the JSON text stored.
    pub steps_json: String,
    /// When the event happened.
    pub at_ms: i64,
    pub integration_id: String,
    pub tool_name: String,
    pub arguments_sha256: String,
    pub requester_id: String,
    pub request_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub created_by_key: String,
    pub principal: String,
}

/// The record of an approval event, as hashed and exported: every field of
/// [`ApprovalEvent`] under its own name (`consumed_by_request` null when none).
pub fn event_record(e: &ApprovalEvent) -> Json {
    let text = |s: &str| Json::String(s.to_owned());
    let number = |n: i64| Json::Number(n as f64);
    Json::Object(vec![
        ("tenant".into(), text(&e.tenant)),
        ("seq".into(), Json::Number(e.seq as f64)),
        ("approval_id".into(), text(&e.approval_id)),
        ("version".into(), number(e.version)),
        ("state".into(), text(&e.state)),
        ("required_roles".into(), text(&e.required_roles)),
        (
            "consumed_by_request".into(),
            e.consumed_by_request.as_deref().map_or(Json::Null, text),
        ),
        ("steps_json".into(), text(&e.steps_json)),
        ("at_ms".into(), number(e.at_ms)),
        ("integration_id".into(), text(&e.integration_id)),
        ("tool_name".into(), text(&e.tool_name)),
        ("arguments_sha256".into(), text(&e.arguments_sha256)),
        ("requester_id".into(), text(&e.requester_id)),
        ("request_id".into(), text(&e.request_id)),
        ("created_at_ms".into(), number(e.created_at_ms)),
        ("expires_at_ms".into(), number(e.expires_at_ms)),
        ("created_by_key".into(), text(&e.created_by_key)),
        ("principal".into(), text(&e.principal)),
    ])
}

/// A tenant's chain of approval events as far as it goes: how many events, and the last hash
/// (64 zeros before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

impl ChainHead {
    pub fn genesis() -> Self {
        ChainHead {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// Gives `events` (one tenant's, in the order their transaction wrote them) the next places
/// in the chain after `head`: sets each `seq`, and returns each hash and the new head.
pub fn link(head: &ChainHead, events: &mut [ApprovalEvent]) -> (Vec<String>, ChainHead) {
    let mut next = head.clone();
    let hashes = events
        .iter_mut()
        .map(|e| {
            next.seq += 1;
            e.seq = next.seq;
            next.hash = chain_hash(&next.hash, &event_record(e));
            next.hash.clone()
        })
        .collect();
    (hashes, next)
}

/// Checks a tenant's chained approval events, ordered by `seq`, against the chain's stored
/// head: numbered 1, 2, … without a gap up to the head, and each hash recomputed from its
/// record and the hash before it. The first break names the event's place in the chain.
pub fn verify_events<'a>(
    events: impl IntoIterator<Item = (&'a ApprovalEvent, &'a str)>,
    head: &ChainHead,
) -> Result<u64, Break> {
    let mut previous = GENESIS.to_owned();
    let mut expected = 1;
    for (event, hash) in events {
        let at = format!(" ({} version {})", event.approval_id, event.version);
        if event.seq < expected {
            return Err(Break {
                at: event.seq,
                problem: format!("appears twice{at}"),
            });
        }
        if event.seq != expected {
            return Err(Break {
                at: expected,
                problem: format!(
                    "is missing (the chain goes from {} to {}{at})",
                    expected - 1,
                    event.seq
                ),
            });
        }
        if event.seq > head.seq {
            return Err(Break {
                at: event.seq,
                problem: format!("is past the chain's head, {}{at}", head.seq),
            });
        }
        let computed = chain_hash(&previous, &event_record(event));
        if computed != hash {
            return Err(Break {
                at: event.seq,
                problem: format!(
                    "does not match its record and the event before it{at} (stored {hash}, \
                     recomputed {computed})"
                ),
            });
        }
        previous = computed;
        expected += 1;
    }
    if expected <= head.seq {
        return Err(Break {
            at: expected,
            problem: format!("is missing (the chain's head is at {})", head.seq),
        });
    }
    if head.seq > 0 && previous != head.hash {
        return Err(Break {
            at: head.seq,
            problem: "does not match the chain's stored head".into(),
        });
    }
    Ok(head.seq)
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
        assert_eq!(check(&edited, 3).unwrap_err().at, 2);
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert_eq!(check(&swapped, 3).unwrap_err().at, 1);
        let gap = vec![good[0].clone(), good[2].clone()];
        assert_eq!(check(&gap, 3).unwrap_err().at, 2);
        let cut = good[..2].to_vec();
        assert_eq!(check(&cut, 3).unwrap_err().at, 3);
        let mut blanked = good.clone();
        blanked[2].1 = String::new();
        assert_eq!(check(&blanked, 3).unwrap_err().at, 3);
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

    fn approval_event(version: i64) -> ApprovalEvent {
        ApprovalEvent {
            tenant: "acme".into(),
            seq: 0,
            approval_id: "apr_1".into(),
            version,
            state: if version == 0 { "pending" } else { "approved" }.into(),
            required_roles: "technician".into(),
            consumed_by_request: None,
            steps_json: "[]".into(),
            at_ms: 1_764_900_000_000 + version,
            integration_id: "entra".into(),
            tool_name: "reset_password".into(),
            arguments_sha256: "ab".repeat(32),
            requester_id: "alice".into(),
            request_id: "r1".into(),
            created_at_ms: 1_764_900_000_000,
            expires_at_ms: 1_764_903_600_000,
            created_by_key: "0123456789abcdef".into(),
            principal: "key:0123456789abcdef".into(),
        }
    }

    /// The approval event's record as documented: pinned, so a change to it is deliberate.
    #[test]
    fn an_approval_events_record_is_as_documented() {
        let mut events = vec![approval_event(0)];
        let (hashes, head) = link(&ChainHead::genesis(), &mut events);
        assert_eq!(events[0].seq, 1);
        assert_eq!(
            canonical::canonicalize(&event_record(&events[0])),
            r#"{"approval_id":"apr_1","arguments_sha256":"abababababababababababababababababababababababababababababababab","at_ms":1764900000000,"consumed_by_request":null,"created_at_ms":1764900000000,"created_by_key":"0123456789abcdef","expires_at_ms":1764903600000,"integration_id":"entra","principal":"key:0123456789abcdef","request_id":"r1","requester_id":"alice","required_roles":"technician","seq":1,"state":"pending","steps_json":"[]","tenant":"acme","tool_name":"reset_password","version":0}"#
        );
        assert_eq!(hashes[0], chain_hash(GENESIS, &event_record(&events[0])));
        assert_eq!(
            head,
            ChainHead {
                seq: 1,
                hash: hashes[0].clone()
            }
        );
    }

    #[test]
    fn linking_continues_from_the_head_and_verify_names_the_first_break() {
        let mut first = vec![approval_event(0)];
        let (_, head) = link(&ChainHead::genesis(), &mut first);
        let mut rest = vec![approval_event(1), approval_event(2)];
        let (hashes, head) = link(&head, &mut rest);
        assert_eq!((rest[0].seq, rest[1].seq, head.seq), (2, 3, 3));
        let mut all: Vec<(ApprovalEvent, String)> = first
            .into_iter()
            .map(|e| {
                let h = chain_hash(GENESIS, &event_record(&e));
                (e, h)
            })
            .collect();
        all.extend(rest.into_iter().zip(hashes));
        let check = |rows: &[(ApprovalEvent, String)], head: &ChainHead| {
            verify_events(rows.iter().map(|(e, h)| (e, h.as_str())), head)
        };
        assert_eq!(check(&all, &head), Ok(3));
        assert_eq!(check(&[], &ChainHead::genesis()), Ok(0));
        let mut edited = all.clone();
        edited[1].0.state = "denied".into();
        assert_eq!(check(&edited, &head).unwrap_err().at, 2);
        let gap = vec![all[0].clone(), all[2].clone()];
        assert_eq!(check(&gap, &head).unwrap_err().at, 2);
        assert_eq!(check(&all[..2], &head).unwrap_err().at, 3);
        let mut swapped = all.clone();
        swapped.swap(1, 2);
        (swapped[1].0.seq, swapped[2].0.seq) = (2, 3);
        assert_eq!(check(&swapped, &head).unwrap_err().at, 2);
        let mut twice = all.clone();
        twice[2].0.seq = 2;
        let forked = check(&twice, &head).unwrap_err();
        assert_eq!(
            (forked.at, forked.problem.starts_with("appears twice")),
            (2, true)
        );
        let behind = ChainHead {
            seq: 2,
            hash: all[1].1.clone(),
        };
        assert_eq!(check(&all, &behind).unwrap_err().at, 3);
        let moved = ChainHead {
            seq: 3,
            hash: GENESIS.into(),
        };
        assert_eq!(check(&all, &moved).unwrap_err().at, 3);
    }
}
