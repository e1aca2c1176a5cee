//! Approval updates shared by both stores: the optimistic update loop and its write cache.
//!
//! An approval changes only by appending its next version (`approval_events`). Each write
//! names the version it makes and the versions of the people its decision read, and the
//! store writes it only if the version before it is the latest (and its own is free) and
//! those people are unchanged (one statement). So a decision made from what this process last read or wrote (the
//! [`ApprovalCache`]) is as safe as one made from a fresh read: if anything changed in
//! between — another replica's decision, the expiry sweep, a directory sync — the write
//! is refused and the decision is made again from a fresh read.
//!
//! Only a decision that writes is ever taken from the cache. One that would answer
//! without writing (still pending, already consumed, refused by a rule) is made again
//! from a fresh read before it is answered, so no answer rests on stale state.

use super::rows::corrupt;
use super::{People, StoreError, UpdateError, Updated};
use crate::policy::{Approval, ApprovalState, Person};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The people a decision read, as the write checks them: the ids asked for (a JSON
/// array) and the `id version` pairs of those found, by id in byte order, space-separated
/// (ids never contain white space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeopleSeen {
    pub ids_json: String,
    pub expect: String,
}

impl PeopleSeen {
    /// `asked` sorted and without duplicates; `version_of` the version of each one found.
    fn new(asked: &[String], version_of: impl Fn(&str) -> Option<i64>) -> Result<Self, StoreError> {
        let ids_json =
            serde_json::to_string(asked).map_err(|e| corrupt("person ids", &e.to_string()))?;
        let mut expect = String::new();
        for id in asked {
            if let Some(version) = version_of(id) {
                if !expect.is_empty() {
                    expect.push(' ');
                }
                expect.push_str(id);
                expect.push(' ');
                expect.push_str(&version.to_string());
            }
        }
        Ok(PeopleSeen { ids_json, expect })
    }
}

/// The ids an update reads: those asked for and the approval's requester, sorted, once.
fn asked_ids(person_ids: &[String], requester: &str) -> Vec<String> {
    let mut ids: Vec<String> = person_ids.to_vec();
    ids.push(requester.to_owned());
    ids.sort();
    ids.dedup();
    ids
}

/// What a decision reads of the people `asked`: by id for the rules, and with their
/// versions as the write checks them. `find` gives each one found, with its version.
fn people_inputs<'a>(
    asked: &[String],
    find: impl Fn(&str) -> Option<&'a (Person, i64)>,
) -> Result<(People, PeopleSeen), StoreError> {
    let people = asked
        .iter()
        .filter_map(|id| find(id).map(|(p, _)| (id.clone(), p.clone())))
        .collect();
    let seen = PeopleSeen::new(asked, |id| find(id).map(|(_, v)| *v))?;
    Ok((people, seen))
}

/// An approval as read for an update: its version, and the people named with theirs.
#[derive(Debug, Clone)]
pub(crate) struct ForUpdate {
    pub approval: Approval,
    pub version: i64,
    /// Each person found, with its version.
    pub people: Vec<(Person, i64)>,
}

/// One approval change: written only if `version - 1` is the approval's latest version and
/// the people are still as `people` says.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub tenant: String,
    pub id: String,
    /// The version this write makes (the one read plus one).
    pub version: i64,
    pub next: Approval,
    pub people: PeopleSeen,
}

impl Write {
    /// `next` as the version after `version`.
    fn after(tenant: &str, id: &str, version: i64, next: Approval, people: PeopleSeen) -> Self {
        Write {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            version: version + 1,
            next,
            people,
        }
    }
}

/// What an update reads and writes, per backend.
pub(crate) trait ApprovalIo {
    /// The approval with its version, and the people in `person_ids` and its requester.
    fn read(
        &mut self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
    ) -> impl Future<Output = Result<Option<ForUpdate>, StoreError>> + Send;
    /// Appends `w` unless the version before it is not the latest or its people changed;
    /// whether it did.
    fn write(&mut self, w: &Write) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Reads (or takes from `cache`), decides with `f`, and writes, until a write goes in or
/// `f` decides from a fresh read that nothing changes. See the module docs.
pub(crate) async fn update<I, F, T, E>(
    io: &mut I,
    cache: &ApprovalCache,
    tenant: &str,
    id: &str,
    person_ids: &[String],
    f: &F,
) -> Result<Option<Updated<T>>, UpdateError<E>>
where
    I: ApprovalIo,
    F: Fn(&Approval, &People) -> Result<(Option<Approval>, T), E>,
{
    if let Some(done) = from_cache(io, cache, tenant, id, person_ids, f).await? {
        return Ok(Some(done));
    }
    for _ in 0..MAX_ATTEMPTS {
        let Some(read) = io.read(tenant, id, person_ids).await? else {
            cache.forget(tenant, id);
            return Ok(None);
        };
        let asked = asked_ids(person_ids, &read.approval.requester_id);
        let (people, seen) =
            people_inputs(&asked, |id| read.people.iter().find(|(p, _)| p.id == id))?;
        cache.read(tenant, &read, &asked);
        let (next, out) = f(&read.approval, &people).map_err(UpdateError::Rule)?;
        let Some(next) = next.filter(|n| n != &read.approval) else {
            return Ok(Some(Updated {
                approval: read.approval,
                changed: false,
                out,
            }));
        };
        let w = Write::after(tenant, id, read.version, next, seen);
        if let Some(approval) = write_through(io, cache, w).await? {
            return Ok(Some(Updated {
                approval,
                changed: true,
                out,
            }));
        }
    }
    // Something changed it between every read and write: answer "retry" rather than wait on.
    Err(StoreError::Unavailable(format!(
        "approval {id:?} changed under each of {MAX_ATTEMPTS} attempts to decide on it"
    ))
    .into())
}

/// Fresh reads an update makes before it gives up: each refused write means another
/// decision on the approval (or a directory change) landed in between.
const MAX_ATTEMPTS: usize = 16;

/// The update decided from the cache and written, if the cache has all it needs, the
/// decision writes, and the write goes in.
async fn from_cache<I, F, T, E>(
    io: &mut I,
    cache: &ApprovalCache,
    tenant: &str,
    id: &str,
    person_ids: &[String],
    f: &F,
) -> Result<Option<Updated<T>>, StoreError>
where
    I: ApprovalIo,
    F: Fn(&Approval, &People) -> Result<(Option<Approval>, T), E>,
{
    let Some(hit) = cache.for_update(tenant, id, person_ids)? else {
        return Ok(None);
    };
    let Ok((Some(next), out)) = f(&hit.approval, &hit.people) else {
        return Ok(None);
    };
    if next == *hit.approval {
        return Ok(None);
    }
    let w = Write::after(tenant, id, hit.version, next, hit.seen);
    Ok(write_through(io, cache, w).await?.map(|approval| Updated {
        approval,
        changed: true,
        out,
    }))
}

/// Writes `w`; the approval it wrote, which the cache now holds, or `None` (and the cache
/// forgets the approval) if the database refused it.
async fn write_through<I: ApprovalIo>(
    io: &mut I,
    cache: &ApprovalCache,
    w: Write,
) -> Result<Option<Approval>, StoreError> {
    if !io.write(&w).await? {
        cache.forget(&w.tenant, &w.id);
        return Ok(None);
    }
    cache.wrote(&w);
    Ok(Some(w.next))
}

/// How far behind where it got to the expiry sweep looks again: an approval committed late
/// (a slow commit, a replica's clock a little behind) whose expiry the sweep has already
/// passed is still found.
pub(crate) const SWEEP_MARGIN_MS: i64 = 60_000;

/// Where an expiry sweep that expired `expired` (at most `limit`) at `now` got to: now, or,
/// if the batch was full and more may be due, the last expiry it reached.
pub(crate) fn swept_to(expired: &[(String, Approval)], limit: u32, now: i64) -> i64 {
    if expired.len() < limit as usize {
        return now;
    }
    expired
        .iter()
        .map(|(_, a)| a.expires_at.0)
        .max()
        .unwrap_or(now)
}

/// Most bytes of approvals kept; past it the cache starts over (it is only a shortcut).
const MAX_CACHED_BYTES: usize = 32 << 20;
/// Most people kept; past it the people start over.
const MAX_CACHED_PEOPLE: usize = 65_536;

/// Open approvals and people as this process last read or wrote them, by tenant.
///
/// Only a shortcut for the write path (see the module docs): every write taken from it is
/// checked by the database, so a stale entry costs one refused write and a fresh read,
/// never a wrong answer. Approvals that can change no more (consumed, denied, expired,
/// cancelled) are not kept; when either part outgrows its bound it is emptied.
#[derive(Debug, Default)]
pub(crate) struct ApprovalCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    approvals: HashMap<(String, String), Cached>,
    bytes: usize,
    /// `None`: asked for and not in the directory.
    people: HashMap<(String, String), Option<(Person, i64)>>,
}

#[derive(Debug)]
struct Cached {
    approval: Arc<Approval>,
    version: i64,
    bytes: usize,
}

/// A cached approval with the people an update names, ready to decide on.
pub(crate) struct Hit {
    pub approval: Arc<Approval>,
    pub version: i64,
    pub people: People,
    pub seen: PeopleSeen,
}

fn settled(state: ApprovalState) -> bool {
    !matches!(state, ApprovalState::Pending | ApprovalState::Approved)
}

fn size_of(a: &Approval) -> usize {
    let steps: usize = a
        .steps
        .iter()
        .map(|s| s.approver_id.len() + s.comment.len() + 48)
        .sum();
    256 + a.id.len()
        + a.integration_id.len()
        + a.tool_name.len()
        + a.arguments_json.len()
        + a.arguments_sha256.len()
        + a.requester_id.len()
        + a.request_id.len()
        + a.created_by_key.len()
        + steps
}

impl ApprovalCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves at worst a stale entry, which the
        // database's checks catch: carry on with what is there.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The approval and every person the update reads, if all are cached.
    fn for_update(
        &self,
        tenant: &str,
        id: &str,
        person_ids: &[String],
    ) -> Result<Option<Hit>, StoreError> {
        let inner = self.lock();
        let Some(cached) = inner.approvals.get(&(tenant.to_owned(), id.to_owned())) else {
            return Ok(None);
        };
        let asked = asked_ids(person_ids, &cached.approval.requester_id);
        let known = |id: &str| inner.people.get(&(tenant.to_owned(), id.to_owned()));
        if !asked.iter().all(|id| known(id).is_some()) {
            return Ok(None);
        }
        let (people, seen) = people_inputs(&asked, |id| known(id).and_then(Option::as_ref))?;
        Ok(Some(Hit {
            approval: cached.approval.clone(),
            version: cached.version,
            people,
            seen,
        }))
    }

    /// An approval this process just created (version 0).
    pub(crate) fn created(&self, tenant: &str, approval: &Approval) {
        self.put(tenant, approval.clone(), 0);
    }

    fn wrote(&self, w: &Write) {
        self.put(&w.tenant, w.next.clone(), w.version);
    }

    fn read(&self, tenant: &str, read: &ForUpdate, asked: &[String]) {
        self.put(tenant, read.approval.clone(), read.version);
        let mut inner = self.lock();
        if inner.people.len() + asked.len() > MAX_CACHED_PEOPLE {
            inner.people.clear();
        }
        for id in asked {
            let found = read.people.iter().find(|(p, _)| &p.id == id).cloned();
            inner.people.insert((tenant.to_owned(), id.clone()), found);
        }
    }

    fn put(&self, tenant: &str, approval: Approval, version: i64) {
        let key = (tenant.to_owned(), approval.id.clone());
        let mut inner = self.lock();
        if let Some(old) = inner.approvals.remove(&key) {
            inner.bytes -= old.bytes;
        }
        if settled(approval.state) {
            return;
        }
        let bytes = size_of(&approval) + tenant.len();
        if inner.bytes + bytes > MAX_CACHED_BYTES {
            inner.approvals.clear();
            inner.bytes = 0;
        }
        inner.bytes += bytes;
        let approval = Arc::new(approval);
        inner.approvals.insert(
            key,
            Cached {
                approval,
                version,
                bytes,
            },
        );
    }

    /// Drops an approval (changed elsewhere, or gone).
    pub(crate) fn forget(&self, tenant: &str, id: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.approvals.remove(&(tenant.to_owned(), id.to_owned())) {
            inner.bytes -= old.bytes;
        }
    }

    /// Drops a tenant's people (after a directory sync).
    pub(crate) fn forget_people(&self, tenant: &str) {
        self.lock().people.retain(|(t, _), _| t != tenant);
    }
}

/// A pending approval of alice's for the stores' unit tests.
#[cfg(test)]
pub(crate) fn test_approval(id: &str, request_id: &str) -> Approval {
    use crate::policy::{ApproverRole, UnixMillis};
    Approval {
        id: id.into(),
        state: ApprovalState::Pending,
        integration_id: "entra".into(),
        tool_name: "reset_password".into(),
        arguments_json: "{}".into(),
        arguments_sha256: "00".into(),
        requester_id: "alice".into(),
        request_id: request_id.into(),
        required_roles: vec![ApproverRole::Technician],
        steps: Vec::new(),
        created_at: UnixMillis(1),
        expires_at: UnixMillis(i64::MAX / 2),
        created_by_key: "key_1".into(),
        consumed_by_request: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ApprovalStep, ApproverRole, UnixMillis};

    fn approval(id: &str) -> Approval {
        test_approval(id, &format!("req-{id}"))
    }

    #[test]
    fn settled_approvals_are_not_kept_and_tenants_do_not_share_entries() {
        let cache = ApprovalCache::default();
        cache.created("t1", &approval("a"));
        assert!(cache.lock().people.is_empty());
        // The requester is not cached yet: no hit, though the approval is.
        assert!(cache.for_update("t1", "a", &[]).expect("lookup").is_none());
        cache
            .lock()
            .people
            .insert(("t1".into(), "alice".into()), None);
        assert!(cache.for_update("t1", "a", &[]).expect("lookup").is_some());
        assert!(cache.for_update("t2", "a", &[]).expect("lookup").is_none());
        let mut consumed = approval("a");
        consumed.state = ApprovalState::Consumed;
        cache.put("t1", consumed, 2);
        assert!(cache.for_update("t1", "a", &[]).expect("lookup").is_none());
        assert_eq!(cache.lock().bytes, 0);
    }

    #[test]
    fn the_people_seen_name_every_id_asked_and_the_versions_of_those_found() {
        let asked = asked_ids(&["tom".into(), "alice".into(), "tom".into()], "alice");
        assert_eq!(asked, ["alice", "tom"]);
        let seen = PeopleSeen::new(&asked, |p| (p == "tom").then_some(7)).expect("seen");
        assert_eq!(seen.ids_json, r#"["alice","tom"]"#);
        assert_eq!(seen.expect, "tom 7");
    }

    #[test]
    fn steps_round_trip_through_their_json() {
        let steps = vec![ApprovalStep {
            role: ApproverRole::Manager,
            approver_id: "mo\"".into(),
            approved: false,
            comment: "no: \u{1F600}".into(),
            decided_at: UnixMillis(42),
        }];
        let json = super::super::rows::steps_to_json(&steps);
        assert_eq!(
            super::super::rows::steps_from_json(&json).expect("parse"),
            steps
        );
    }
}
