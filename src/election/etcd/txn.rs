//! The few transactions beside the campaign: put-if-absent (shared by the candidate key and
//! elect-run's slot claim), the candidate key's update and fenced delete, the whole-election
//! read behind `/members` and `electd status`,
//! and elect-run's slot records, whose every write is fenced by the leader key's create
//! revision.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use super::client::Clients;
use super::error::EtcdError;
use crate::election::Candidate;

/// A candidate as read from a key-value.
pub(super) fn candidate(kv: &KeyValue) -> Candidate {
    Candidate {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        lease: kv.lease(),
    }
}

/// What [`put_if_absent`] found.
pub(super) enum PutIfAbsent {
    /// Written, at this revision.
    Created(i64),
    /// Not written: the key exists, as it is now.
    Exists(KeyValue),
    /// Not written: the key is absent but one of the extra conditions failed.
    ConditionFailed,
}

/// In one transaction: if `key` is absent and every condition in `also` holds, put `value`
/// bound to `lease`; otherwise read `key`.
pub(super) async fn put_if_absent(
    clients: &Clients,
    op: &'static str,
    key: &str,
    value: &str,
    lease: i64,
    also: impl IntoIterator<Item = Compare>,
    after: Duration,
) -> Result<PutIfAbsent, EtcdError> {
    let mut when: Vec<Compare> = also.into_iter().collect();
    when.push(Compare::create_revision(key, CompareOp::Equal, 0));
    let txn = Txn::new()
        .when(when)
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let floor = clients.max_revision();
    let resp = clients
        .call(op, after, lease, |mut c| async move { c.txn(txn).await })
        .await?;
    clients.check(floor, resp.header())?;
    if resp.succeeded() {
        return Ok(PutIfAbsent::Created(
            resp.header().map(|h| h.revision()).unwrap_or_default(),
        ));
    }
    let existing = resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    Ok(existing.map_or(PutIfAbsent::ConditionFailed, PutIfAbsent::Exists))
}

/// Every candidate in queue order (lowest create revision first).
pub(super) async fn candidates(
    clients: &Clients,
    prefix: &str,
    after: Duration,
) -> Result<(i64, Vec<Candidate>), EtcdError> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    let floor = clients.max_revision();
    let resp = clients
        .call("election list", after, 0, |mut c| async move {
            c.get(prefix, Some(opts)).await
        })
        .await?;
    clients.check(floor, resp.header())?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok((revision, resp.kvs().iter().map(candidate).collect()))
}

/// Rewrite our candidate `key` (still bound to `lease`) iff it still has `create_revision`;
/// whether it was written.
pub(super) async fn update_candidate(
    clients: &Clients,
    key: &str,
    value: &str,
    lease: i64,
    create_revision: i64,
    after: Duration,
) -> Result<bool, EtcdError> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            key,
            CompareOp::Equal,
            create_revision,
        )])
        .and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let floor = clients.max_revision();
    let resp = clients
        .call("candidate update", after, lease, |mut c| async move {
            c.txn(txn).await
        })
        .await?;
    clients.check(floor, resp.header())?;
    Ok(resp.succeeded())
}

/// Delete our candidate `key` iff it still has `create_revision` and is still bound to
/// `lease` (a key another writer rewrote is not ours to delete); whether it was deleted (it
/// may be gone already).
pub(super) async fn delete_candidate(
    clients: &Clients,
    key: &str,
    create_revision: i64,
    lease: i64,
    after: Duration,
) -> Result<bool, EtcdError> {
    let txn = Txn::new()
        .when([
            Compare::create_revision(key, CompareOp::Equal, create_revision),
            Compare::lease(key, CompareOp::Equal, lease),
        ])
        .and_then([TxnOp::delete(key, None)]);
    let floor = clients.max_revision();
    let resp = clients
        .call("candidate delete", after, 0, |mut c| async move {
            c.txn(txn).await
        })
        .await?;
    clients.check(floor, resp.header())?;
    Ok(resp.succeeded())
}

/// What a fenced slot claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotClaim {
    /// Written at this revision.
    Claimed { mod_revision: i64 },
    /// The slot key exists: its value, mod revision and lease.
    Exists {
        value: String,
        mod_revision: i64,
        lease: i64,
    },
    /// Our leader key no longer has create revision `token`: not written.
    NotLeader,
}

/// The claim: put `value` at `key` bound to `lease` iff our leader key still has create
/// revision `token` and the slot key does not exist; otherwise read the slot key to tell
/// "taken" from "not leader".
pub(super) async fn claim_slot(
    clients: &Clients,
    key: &str,
    value: &str,
    leader_key: &str,
    token: i64,
    lease: i64,
    after: Duration,
) -> Result<SlotClaim, EtcdError> {
    let fenced = [Compare::create_revision(
        leader_key,
        CompareOp::Equal,
        token,
    )];
    let found = put_if_absent(clients, "slot claim txn", key, value, lease, fenced, after).await?;
    Ok(match found {
        PutIfAbsent::Created(rev) => SlotClaim::Claimed { mod_revision: rev },
        PutIfAbsent::Exists(kv) => SlotClaim::Exists {
            value: String::from_utf8_lossy(kv.value()).into_owned(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        },
        PutIfAbsent::ConditionFailed => SlotClaim::NotLeader,
    })
}

/// Rewrite the slot record at `key` iff our leader key still has create revision `token` and
/// the record is still at `mod_revision` (ours). Bound to `lease`, or keeping the record's
/// lease when `None`. Returns whether it was written.
#[allow(clippy::too_many_arguments)]
pub(super) async fn update_slot(
    clients: &Clients,
    key: &str,
    value: &str,
    leader_key: &str,
    token: i64,
    mod_revision: i64,
    lease: Option<i64>,
    after: Duration,
) -> Result<bool, EtcdError> {
    let put = match lease {
        Some(l) => PutOptions::new().with_lease(l),
        None => PutOptions::new().with_ignore_lease(),
    };
    let txn = Txn::new()
        .when([
            Compare::create_revision(leader_key, CompareOp::Equal, token),
            Compare::mod_revision(key, CompareOp::Equal, mod_revision),
        ])
        .and_then([TxnOp::put(key, value, Some(put))]);
    let floor = clients.max_revision();
    let resp = clients
        .call("slot record update", after, 0, |mut c| async move {
            c.txn(txn).await
        })
        .await?;
    clients.check(floor, resp.header())?;
    Ok(resp.succeeded())
}
