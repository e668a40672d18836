//! Every Redis key and channel Switchboard uses, in one place: the cluster
//! bus (`cluster::redis`) and the shared store (`store::redis`) meet on the
//! name claims and the node channels, so both take the names from here.
//! docs/cluster.md and docs/durability.md describe what each holds.

/// Channel of broadcasts, room publishes without history, events and
/// hello/snapshot frames: every node.
pub(crate) const ALL: &str = "sb:all";
/// Channel of room messages kept in Redis, `{rseq}\n{frame}`: every node.
pub const ROOM_CHANNEL: &str = "sb:room";
/// Prefix of a node's channel (and of its liveness key).
pub(crate) const NODE_PREFIX: &str = "sb:node:";
/// Prefix of a name's claim.
pub(crate) const NAME_PREFIX: &str = "sb:name:";
/// Prefix of a room's history stream.
pub(crate) const ROOM_PREFIX: &str = "sb:room:";

/// The node holding `name` (the claim, with a TTL).
pub(crate) fn name_key(name: &str) -> String {
    format!("{NAME_PREFIX}{name}")
}
/// Liveness key of node `node`; also the channel of its deliveries.
pub(crate) fn node_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}
/// A name's seq counter; its existence makes the name known.
pub(crate) fn seq_key(name: &str) -> String {
    format!("sb:seq:{name}")
}
/// A name's inbox stream, entry id `{seq}-1`.
pub(crate) fn inbox_key(name: &str) -> String {
    format!("sb:inbox:{name}")
}
/// The bytes a name's inbox entries are charged.
pub(crate) fn bytes_key(name: &str) -> String {
    format!("sb:ibytes:{name}")
}
/// The client ids a name sent within the dedup window.
pub(crate) fn sent_key(name: &str) -> String {
    format!("sb:sent:{name}")
}
/// A room's rseq counter.
pub(crate) fn rseq_key(room: &str) -> String {
    format!("sb:rseq:{room}")
}
/// A room's history stream, entry id `{rseq}-1`.
pub(crate) fn room_key(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}
