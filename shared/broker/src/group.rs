//! Classic consumer groups: join, sync, heartbeat, leave, and committed offsets.
//!
//! The state machine is Kafka's: a join moves a group to *preparing rebalance*; once every known
//! member has (re)joined, or the rebalance deadline passes, a new generation starts and the
//! leader gets the member list (*completing rebalance*); the leader's sync carries the
//! assignments and makes the group *stable*. Members that stop heartbeating are removed after
//! their session timeout, which starts a rebalance.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::Code;

/// What a member learns when a generation starts.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Error, if the join failed.
    pub error: Code,
    /// The new generation.
    pub generation: i32,
    /// The chosen protocol (assignor).
    pub protocol: Option<String>,
    /// The group's protocol type ("consumer").
    pub protocol_type: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's own id.
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl Joined {
    fn error(error: Code, member_id: String) -> Joined {
        Joined { error, generation: -1, protocol: None, protocol_type: None, leader: String::new(), member_id, members: Vec::new() }
    }
}

/// What a member learns from a sync.
#[derive(Debug, Clone)]
pub struct Synced {
    /// Error, if the sync failed.
    pub error: Code,
    /// The member's assignment.
    pub assignment: Bytes,
    /// The chosen protocol.
    pub protocol: Option<String>,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
}

/// A join request, as the coordinator needs it.
pub struct JoinRequest {
    /// The group.
    pub group: String,
    /// Empty for a new member.
    pub member_id: String,
    /// Static membership id, if any.
    pub instance_id: Option<String>,
    /// The client id, the prefix of a new member's id.
    pub client_id: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Rebalance timeout.
    pub rebalance_timeout: Duration,
    /// Protocol type ("consumer").
    pub protocol_type: String,
    /// (assignor name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// Whether the client expects MEMBER_ID_REQUIRED for a new member (JoinGroup v4+).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

struct Member {
    instance_id: Option<String>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_seen: Instant,
    join: Option<oneshot::Sender<Joined>>,
    sync: Option<oneshot::Sender<Synced>>,
    assignment: Bytes,
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pending: HashSet<String>,
    rebalance_deadline: Instant,
    /// (topic, partition) → (offset, metadata).
    offsets: HashMap<(String, i32), (i64, Option<String>)>,
}

impl Group {
    fn new() -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashSet::new(),
            rebalance_deadline: Instant::now(),
            offsets: HashMap::new(),
        }
    }

    fn prepare_rebalance(&mut self) {
        if self.state == State::CompletingRebalance {
            for m in self.members.values_mut() {
                if let Some(tx) = m.sync.take() {
                    let _ = tx.send(Synced { error: Code::RebalanceInProgress, assignment: Bytes::new(), protocol: None, protocol_type: None });
                }
            }
        }
        if self.state != State::PreparingRebalance {
            let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or_default();
            self.rebalance_deadline = Instant::now() + timeout;
        }
        self.state = State::PreparingRebalance;
    }

    /// Starts the next generation once every member has joined, or `force` (the deadline passed):
    /// then members that did not join are removed.
    fn try_complete_join(&mut self, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        if !force && self.members.values().any(|m| m.join.is_none()) {
            return;
        }
        self.members.retain(|_, m| m.join.is_some());
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.leader = None;
            self.protocol = None;
            return;
        }
        // The first of the leader's protocols that every member supports.
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().expect("not empty").clone(),
        };
        let protocol = self.members[&leader]
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == *name)))
            .cloned();
        self.leader = Some(leader.clone());
        self.protocol = protocol.clone();
        self.state = State::CompletingRebalance;
        let members: Vec<(String, Option<String>, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m.protocols.iter().find(|(n, _)| Some(n) == protocol.as_ref()).map(|(_, md)| md.clone()).unwrap_or_default();
                (id.clone(), m.instance_id.clone(), metadata)
            })
            .collect();
        let now = Instant::now();
        for (id, m) in self.members.iter_mut() {
            m.last_seen = now;
            m.assignment = Bytes::new();
            let joined = Joined {
                error: Code::None,
                generation: self.generation,
                protocol: protocol.clone(),
                protocol_type: self.protocol_type.clone(),
                leader: leader.clone(),
                member_id: id.clone(),
                members: if *id == leader { members.clone() } else { Vec::new() },
            };
            if let Some(tx) = m.join.take() {
                let _ = tx.send(joined);
            }
        }
    }

    fn remove(&mut self, member_id: &str) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        if self.state != State::Empty {
            self.prepare_rebalance();
            self.try_complete_join(false);
        }
        true
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Code {
        if !self.members.contains_key(member_id) {
            Code::UnknownMemberId
        } else if generation != self.generation {
            Code::IllegalGeneration
        } else {
            Code::None
        }
    }
}

/// Every group of the broker.
#[derive(Default)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_member: Mutex<u64>,
}

impl Coordinator {
    fn with_group<T>(&self, group: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = self.groups.lock().expect("coordinator lock");
        f(groups.entry(group.to_string()).or_insert_with(Group::new))
    }

    /// Joins `req.group`; the answer comes when the generation starts.
    pub fn join(&self, req: JoinRequest) -> oneshot::Receiver<Joined> {
        let (tx, rx) = oneshot::channel();
        let new_id = || {
            let mut n = self.next_member.lock().expect("member counter");
            *n += 1;
            format!("{}-{}-{}", if req.client_id.is_empty() { "member" } else { &req.client_id }, *n, uuid::Uuid::new_v4().simple())
        };
        self.with_group(&req.group, |g| {
            if req.protocols.is_empty() || g.protocol_type.as_ref().is_some_and(|t| *t != req.protocol_type && !g.members.is_empty()) {
                let _ = tx.send(Joined::error(Code::InconsistentGroupProtocol, req.member_id.clone()));
                return;
            }
            let member_id = if req.member_id.is_empty() {
                let id = new_id();
                if req.require_known_member_id {
                    g.pending.insert(id.clone());
                    let _ = tx.send(Joined::error(Code::MemberIdRequired, id));
                    return;
                }
                id
            } else if g.members.contains_key(&req.member_id) || g.pending.remove(&req.member_id) {
                req.member_id.clone()
            } else {
                let _ = tx.send(Joined::error(Code::UnknownMemberId, req.member_id.clone()));
                return;
            };
            g.protocol_type = Some(req.protocol_type.clone());
            let member = g.members.entry(member_id).or_insert_with(|| Member {
                instance_id: None,
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocols: Vec::new(),
                last_seen: Instant::now(),
                join: None,
                sync: None,
                assignment: Bytes::new(),
            });
            member.instance_id = req.instance_id.clone();
            member.session_timeout = req.session_timeout;
            member.rebalance_timeout = req.rebalance_timeout;
            member.protocols = req.protocols.clone();
            member.last_seen = Instant::now();
            member.join = Some(tx);
            g.prepare_rebalance();
            g.try_complete_join(false);
        });
        rx
    }

    /// Syncs a member: the leader's call carries every assignment; the others wait for it.
    pub fn sync(&self, group: &str, member_id: &str, generation: i32, assignments: Vec<(String, Bytes)>) -> oneshot::Receiver<Synced> {
        let (tx, rx) = oneshot::channel();
        self.with_group(group, |g| {
            let fail = |code| Synced { error: code, assignment: Bytes::new(), protocol: None, protocol_type: None };
            let code = g.check_member(member_id, generation);
            if code != Code::None {
                let _ = tx.send(fail(code));
                return;
            }
            match g.state {
                State::PreparingRebalance | State::Empty => {
                    let _ = tx.send(fail(Code::RebalanceInProgress));
                }
                State::Stable => {
                    let m = &g.members[member_id];
                    let _ = tx.send(Synced {
                        error: Code::None,
                        assignment: m.assignment.clone(),
                        protocol: g.protocol.clone(),
                        protocol_type: g.protocol_type.clone(),
                    });
                }
                State::CompletingRebalance => {
                    g.members.get_mut(member_id).expect("checked").sync = Some(tx);
                    if g.leader.as_deref() == Some(member_id) {
                        for (id, assignment) in assignments {
                            if let Some(m) = g.members.get_mut(&id) {
                                m.assignment = assignment;
                            }
                        }
                        g.state = State::Stable;
                        let now = Instant::now();
                        for m in g.members.values_mut() {
                            m.last_seen = now;
                            if let Some(tx) = m.sync.take() {
                                let _ = tx.send(Synced {
                                    error: Code::None,
                                    assignment: m.assignment.clone(),
                                    protocol: g.protocol.clone(),
                                    protocol_type: g.protocol_type.clone(),
                                });
                            }
                        }
                    }
                }
            }
        });
        rx
    }

    /// A member's heartbeat.
    pub fn heartbeat(&self, group: &str, member_id: &str, generation: i32) -> Code {
        self.with_group(group, |g| {
            let code = g.check_member(member_id, generation);
            if code != Code::None {
                return code;
            }
            g.members.get_mut(member_id).expect("checked").last_seen = Instant::now();
            if g.state == State::PreparingRebalance {
                Code::RebalanceInProgress
            } else {
                Code::None
            }
        })
    }

    /// Members leave; the rest rebalance.
    pub fn leave(&self, group: &str, member_ids: &[String]) -> Vec<Code> {
        self.with_group(group, |g| member_ids.iter().map(|id| if g.remove(id) { Code::None } else { Code::UnknownMemberId }).collect())
    }

    /// Commits offsets: allowed for a member of the current generation, or without a generation
    /// (`generation < 0`: a client that assigns itself its partitions).
    pub fn commit(&self, group: &str, member_id: &str, generation: i32, offsets: Vec<(String, i32, i64, Option<String>)>) -> Code {
        self.with_group(group, |g| {
            if generation >= 0 {
                let code = g.check_member(member_id, generation);
                if code != Code::None {
                    return code;
                }
                if g.state == State::CompletingRebalance {
                    return Code::RebalanceInProgress;
                }
            }
            for (topic, partition, offset, metadata) in offsets {
                g.offsets.insert((topic, partition), (offset, metadata));
            }
            Code::None
        })
    }

    /// The committed offset of a partition, with its metadata; -1 when none.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> (i64, Option<String>) {
        let groups = self.groups.lock().expect("coordinator lock");
        groups.get(group).and_then(|g| g.offsets.get(&(topic.to_string(), partition)).cloned()).unwrap_or((-1, None))
    }

    /// Every (topic, partition) the group has committed.
    pub fn committed_partitions(&self, group: &str) -> Vec<(String, i32)> {
        let groups = self.groups.lock().expect("coordinator lock");
        groups.get(group).map(|g| g.offsets.keys().cloned().collect()).unwrap_or_default()
    }

    /// Removes members whose session expired and completes rebalances whose deadline passed.
    pub fn expire(&self, now: Instant) {
        let mut groups = self.groups.lock().expect("coordinator lock");
        for (name, g) in groups.iter_mut() {
            let expired: Vec<String> =
                g.members.iter().filter(|(_, m)| m.join.is_none() && now.duration_since(m.last_seen) > m.session_timeout).map(|(id, _)| id.clone()).collect();
            for id in expired {
                tracing::debug!(group = %name, member = %id, "member session expired");
                g.remove(&id);
            }
            if g.state == State::PreparingRebalance && now >= g.rebalance_deadline {
                g.try_complete_join(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(c: &Coordinator, member_id: &str) -> oneshot::Receiver<Joined> {
        c.join(JoinRequest {
            group: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"md"))],
            require_known_member_id: true,
        })
    }

    #[test]
    fn two_members_join_sync_and_a_leave_rebalances() {
        let c = Coordinator::default();
        let first = join(&c, "").try_recv().unwrap();
        assert_eq!(first.error, Code::MemberIdRequired);
        let a = join(&c, &first.member_id).try_recv().unwrap();
        assert_eq!((a.error, a.generation, a.members.len()), (Code::None, 1, 1));
        let synced = c.sync("g", &a.member_id, 1, vec![(a.member_id.clone(), Bytes::from_static(b"all"))]).try_recv().unwrap();
        assert_eq!(synced.assignment, Bytes::from_static(b"all"));

        // A second member: the first learns of the rebalance through its heartbeat.
        let b_id = join(&c, "").try_recv().unwrap().member_id;
        let mut b = join(&c, &b_id);
        assert!(b.try_recv().is_err(), "waits for the first member to rejoin");
        assert_eq!(c.heartbeat("g", &a.member_id, 1), Code::RebalanceInProgress);
        let a2 = join(&c, &a.member_id).try_recv().unwrap();
        let b2 = b.try_recv().unwrap();
        assert_eq!((a2.generation, b2.generation), (2, 2));
        assert_eq!(a2.leader, a.member_id);
        assert_eq!(a2.members.len(), 2);
        assert!(b2.members.is_empty(), "only the leader gets the member list");

        let mut b_sync = c.sync("g", &b_id, 2, vec![]);
        assert!(b_sync.try_recv().is_err(), "a follower waits for the leader's assignments");
        c.sync("g", &a.member_id, 2, vec![(b_id.clone(), Bytes::from_static(b"half"))]).try_recv().unwrap();
        assert_eq!(b_sync.try_recv().unwrap().assignment, Bytes::from_static(b"half"));
        assert_eq!(c.commit("g", &b_id, 1, vec![("t".into(), 0, 5, None)]), Code::IllegalGeneration);
        assert_eq!(c.commit("g", &b_id, 2, vec![("t".into(), 0, 5, None)]), Code::None);
        assert_eq!(c.committed("g", "t", 0).0, 5);

        assert_eq!(c.leave("g", std::slice::from_ref(&a.member_id)), vec![Code::None]);
        assert_eq!(c.heartbeat("g", &b_id, 2), Code::RebalanceInProgress);
        assert_eq!(join(&c, &b_id).try_recv().unwrap().generation, 3);
    }

    #[test]
    fn a_silent_member_is_expired_and_an_unknown_one_is_refused() {
        let c = Coordinator::default();
        let id = join(&c, "").try_recv().unwrap().member_id;
        join(&c, &id).try_recv().unwrap();
        c.expire(Instant::now() + Duration::from_secs(11));
        assert_eq!(c.heartbeat("g", &id, 1), Code::UnknownMemberId);
        assert_eq!(join(&c, "nobody").try_recv().unwrap().error, Code::UnknownMemberId);
    }
}
