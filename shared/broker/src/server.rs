//! The listener, connections, and one handler per API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Code;
use crate::group::{Coordinator, JoinRequest};
use crate::log::PartitionLog;

const NODE_ID: i32 = 0;
/// Largest request accepted (a produce request of many batches).
const MAX_REQUEST: usize = 100 * 1024 * 1024;

/// How to run a broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Partitions of a topic created on first use (metadata or produce); `None`: unknown topics
    /// are an error, as with `auto.create.topics.enable=false`.
    pub auto_create_partitions: Option<i32>,
    /// Partitions of a topic created without a count.
    pub default_partitions: i32,
    /// Bytes kept per partition; older batches are dropped.
    pub retention_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auto_create_partitions: Some(1),
            default_partitions: 1,
            retention_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Topic {
    id: uuid::Uuid,
    partitions: Vec<Mutex<PartitionLog>>,
    /// Bumped on every append to the topic: fetches waiting on it look again. One per topic, so
    /// an append wakes only the fetches of its topic, not every consumer's.
    appended: watch::Sender<u64>,
}

impl Topic {
    fn partition(&self, index: i32) -> Option<&Mutex<PartitionLog>> {
        self.partitions.get(usize::try_from(index).ok()?)
    }
}

struct State {
    config: BrokerConfig,
    addr: SocketAddr,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    groups: Coordinator,
    next_producer_id: Mutex<i64>,
}

/// A running broker; stops when dropped.
pub struct Broker {
    state: Arc<State>,
    stop: CancellationToken,
}

impl Broker {
    /// Binds the listener and serves on the current tokio runtime.
    pub async fn start(config: BrokerConfig) -> std::io::Result<Broker> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State { config, addr, topics: RwLock::new(HashMap::new()), groups: Coordinator::default(), next_producer_id: Mutex::new(1000) });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, state.clone(), stop.clone()));
        let (expiry_state, expiry_stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = expiry_stop.cancelled() => break,
                    _ = tick.tick() => expiry_state.groups.expire(Instant::now()),
                }
            }
        });
        Ok(Broker { state, stop })
    }

    /// `host:port` for clients' `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.state.addr.to_string()
    }

    /// Creates a topic; `Err(TopicAlreadyExists)` if it exists.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), Code> {
        self.state.create_topic(name, partitions)
    }

    /// Stops listening and closes every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (state, stop) = (state.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = serve(stream, &state) => if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "broker connection closed");
                        },
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "broker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection: requests are answered one at a time, in order, as Kafka does.
async fn serve(stream: TcpStream, state: &State) -> anyhow::Result<()> {
    let (read, write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut write = BufWriter::new(write);
    loop {
        let size = match read.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let size = usize::try_from(size).ok().filter(|n| (4..=MAX_REQUEST).contains(n)).ok_or_else(|| anyhow::anyhow!("request size {size} out of range"))?;
        let mut buf = BytesMut::zeroed(size);
        read.read_exact(&mut buf).await?;
        let Some(response) = handle(state, buf.freeze()).await? else { continue };
        write.write_i32(response.len() as i32).await?;
        write.write_all(&response).await?;
        write.flush().await?;
    }
}

/// The encoded response (header and body) to one request; `None` for a produce with acks 0.
async fn handle(state: &State, mut buf: Bytes) -> anyhow::Result<Option<Bytes>> {
    if buf.len() < 8 {
        anyhow::bail!("request too short");
    }
    let key = (&buf[0..2]).get_i16();
    let version = (&buf[2..4]).get_i16();
    let correlation_id = (&buf[4..8]).get_i32();
    let api = ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown API key {key}"))?;
    let supported = supported(api);
    if api == ApiKey::ApiVersions && !supported.is_some_and(|(min, max)| (min..=max).contains(&version)) {
        // KIP-511: an ApiVersions request of a newer version is answered in v0 with the list.
        let mut body = ApiVersionsResponse::default();
        body.error_code = Code::UnsupportedVersion.value();
        body.api_keys = api_versions();
        return encode(correlation_id, api, 0, ResponseKind::ApiVersions(body)).map(Some);
    }
    if !supported.is_some_and(|(min, max)| (min..=max).contains(&version)) {
        anyhow::bail!("{api:?} v{version} is not supported (supported: {supported:?})");
    }
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))?;
    let client_id = header.client_id.as_ref().map(|c| c.as_str().to_string()).unwrap_or_default();
    let request = RequestKind::decode(api, &mut buf, version)?;
    let response = match request {
        RequestKind::ApiVersions(_) => {
            let mut r = ApiVersionsResponse::default();
            r.api_keys = api_versions();
            ResponseKind::ApiVersions(r)
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(state.metadata(r, version)),
        RequestKind::Produce(r) => {
            let acks = r.acks;
            let response = state.produce(r);
            if acks == 0 {
                return Ok(None);
            }
            ResponseKind::Produce(response)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(state.fetch(r).await),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(state.list_offsets(r)),
        RequestKind::OffsetForLeaderEpoch(r) => ResponseKind::OffsetForLeaderEpoch(state.offset_for_leader_epoch(r)),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(state.create_topics(r)),
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(state.init_producer_id(r)),
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(state.find_coordinator(r, version)),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(state.join_group(r, version, client_id).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(state.sync_group(r).await),
        RequestKind::Heartbeat(r) => {
            let mut out = HeartbeatResponse::default();
            out.error_code = state.groups.heartbeat(&r.group_id, &r.member_id, r.generation_id).value();
            ResponseKind::Heartbeat(out)
        }
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(state.leave_group(r, version)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(state.offset_commit(r)),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(state.offset_fetch(r)),
        other => anyhow::bail!("no handler for {other:?}"),
    };
    encode(correlation_id, api, version, response).map(Some)
}

fn encode(correlation_id: i32, api: ApiKey, version: i16, body: ResponseKind) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::new();
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut out, api.response_header_version(version))?;
    body.encode(&mut out, version)?;
    Ok(out.freeze())
}

/// The versions served: what this broker implements, within what the protocol crate knows.
fn supported(api: ApiKey) -> Option<(i16, i16)> {
    let (min, max) = match api {
        ApiKey::Produce => (3, 9),
        ApiKey::Fetch => (4, 12),
        ApiKey::ListOffsets => (1, 7),
        ApiKey::Metadata => (1, 12),
        ApiKey::OffsetCommit => (2, 8),
        ApiKey::OffsetFetch => (1, 7),
        ApiKey::FindCoordinator => (0, 4),
        ApiKey::JoinGroup => (0, 7),
        ApiKey::Heartbeat => (0, 4),
        ApiKey::LeaveGroup => (0, 4),
        ApiKey::SyncGroup => (0, 5),
        ApiKey::ApiVersions => (0, 3),
        ApiKey::CreateTopics => (2, 7),
        ApiKey::InitProducerId => (0, 4),
        ApiKey::OffsetForLeaderEpoch => (2, 4),
        _ => return None,
    };
    let known = api.valid_versions();
    let (min, max) = (min.max(known.min), max.min(known.max));
    (min <= max).then_some((min, max))
}

fn api_versions() -> Vec<api_versions_response::ApiVersion> {
    ApiKey::iter()
        .filter_map(|api| {
            let (min, max) = supported(api)?;
            let mut v = api_versions_response::ApiVersion::default();
            v.api_key = api as i16;
            v.min_version = min;
            v.max_version = max;
            Some(v)
        })
        .collect()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 249 && name != "." && name != ".." && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl State {
    fn create_topic(&self, name: &str, partitions: i32) -> Result<(), Code> {
        if !valid_topic_name(name) {
            return Err(Code::InvalidTopic);
        }
        if !(1..=10_000).contains(&partitions) {
            return Err(Code::InvalidPartitions);
        }
        let mut topics = self.topics.write().expect("topics lock");
        if topics.contains_key(name) {
            return Err(Code::TopicAlreadyExists);
        }
        let partitions = (0..partitions).map(|_| Mutex::new(PartitionLog::default())).collect();
        topics.insert(name.to_string(), Arc::new(Topic { id: uuid::Uuid::new_v4(), partitions, appended: watch::channel(0).0 }));
        Ok(())
    }

    /// The topic, created first if unknown and `create` and auto-creation is on.
    fn topic(&self, name: &str, create: bool) -> Option<Arc<Topic>> {
        if let Some(t) = self.topics.read().expect("topics lock").get(name) {
            return Some(t.clone());
        }
        let partitions = self.config.auto_create_partitions.filter(|_| create)?;
        match self.create_topic(name, partitions) {
            Ok(()) | Err(Code::TopicAlreadyExists) => self.topics.read().expect("topics lock").get(name).cloned(),
            Err(_) => None,
        }
    }

    fn metadata(&self, r: MetadataRequest, version: i16) -> MetadataResponse {
        let mut out = MetadataResponse::default();
        let mut broker = metadata_response::MetadataResponseBroker::default();
        broker.node_id = BrokerId(NODE_ID);
        broker.host = str_bytes(&self.addr.ip().to_string());
        broker.port = i32::from(self.addr.port());
        out.brokers = vec![broker];
        out.cluster_id = Some(StrBytes::from_static_str("saga-embedded"));
        out.controller_id = BrokerId(NODE_ID);
        let names: Vec<String> = match r.topics {
            None => {
                let mut all: Vec<String> = self.topics.read().expect("topics lock").keys().cloned().collect();
                all.sort();
                all
            }
            Some(ts) => ts.into_iter().filter_map(|t| t.name.map(|n| n.0.as_str().to_string())).collect(),
        };
        // v4+ carries the client's wish; before it, requests always allowed creation.
        let create = version < 4 || r.allow_auto_topic_creation;
        for topic_name in names {
            let mut t = metadata_response::MetadataResponseTopic::default();
            t.name = Some(name(&topic_name));
            match self.topic(&topic_name, create) {
                Some(topic) => {
                    t.topic_id = topic.id;
                    t.partitions = (0..topic.partitions.len() as i32)
                        .map(|i| {
                            let mut p = metadata_response::MetadataResponsePartition::default();
                            p.partition_index = i;
                            p.leader_id = BrokerId(NODE_ID);
                            p.leader_epoch = 0;
                            p.replica_nodes = vec![BrokerId(NODE_ID)];
                            p.isr_nodes = vec![BrokerId(NODE_ID)];
                            p
                        })
                        .collect();
                }
                None => {
                    t.error_code = if valid_topic_name(&topic_name) { Code::UnknownTopicOrPartition } else { Code::InvalidTopic }.value();
                }
            }
            out.topics.push(t);
        }
        out
    }

    fn produce(&self, r: ProduceRequest) -> ProduceResponse {
        let mut out = ProduceResponse::default();
        for td in r.topic_data {
            let topic = self.topic(td.name.0.as_str(), true);
            let mut appended = false;
            let mut tr = produce_response::TopicProduceResponse::default();
            tr.name = td.name.clone();
            for pd in td.partition_data {
                let mut pr = produce_response::PartitionProduceResponse::default();
                pr.index = pd.index;
                pr.base_offset = -1;
                pr.log_append_time_ms = -1;
                pr.log_start_offset = -1;
                let log = topic.as_ref().and_then(|t| t.partition(pd.index));
                match (log, pd.records) {
                    (None, _) => pr.error_code = Code::UnknownTopicOrPartition.value(),
                    (Some(_), None) => pr.error_code = Code::CorruptMessage.value(),
                    (Some(log), Some(records)) => {
                        let mut log = log.lock().expect("partition lock");
                        match log.append(&records, self.config.retention_bytes) {
                            Ok(a) => {
                                pr.base_offset = a.base_offset;
                                pr.log_start_offset = log.start_offset();
                                appended |= !a.duplicate;
                            }
                            Err(code) => pr.error_code = code.value(),
                        }
                    }
                }
                tr.partition_responses.push(pr);
            }
            if let Some(topic) = topic.filter(|_| appended) {
                topic.appended.send_modify(|n| *n += 1);
            }
            out.responses.push(tr);
        }
        out
    }

    /// Answers at once when any partition has records past the fetch offset (or an error);
    /// otherwise waits for the next append, up to `max_wait_ms`.
    async fn fetch(&self, r: FetchRequest) -> FetchResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::try_from(r.max_wait_ms).unwrap_or(0));
        let min_bytes = usize::try_from(r.min_bytes).unwrap_or(0).max(1);
        loop {
            // Subscribed before reading, so an append in between is not missed. A topic that does
            // not exist makes the read answer at once with an error.
            let mut appended: Vec<watch::Receiver<u64>> =
                r.topics.iter().filter_map(|ft| self.topic(ft.topic.0.as_str(), false)).map(|t| t.appended.subscribe()).collect();
            let (response, bytes, errors) = self.read_fetch(&r);
            if bytes >= min_bytes || errors {
                return response;
            }
            if appended.is_empty() {
                // A fetch of no topics has nothing to wait for but its deadline (nor has one whose
                // topics were all made between the subscription and the read, a window of
                // microseconds that the embedded stack never meets: it makes its topics first).
                tokio::time::sleep_until(deadline).await;
                return self.read_fetch(&r).0;
            }
            let any_append = futures::future::select_all(appended.iter_mut().map(|a| Box::pin(a.changed())));
            tokio::select! {
                (changed, _, _) = any_append => if changed.is_err() { return response },
                _ = tokio::time::sleep_until(deadline) => return self.read_fetch(&r).0,
            }
        }
    }

    fn read_fetch(&self, r: &FetchRequest) -> (FetchResponse, usize, bool) {
        let mut out = FetchResponse::default();
        let max_bytes = usize::try_from(r.max_bytes).unwrap_or(usize::MAX).max(1);
        let mut total = 0;
        let mut errors = false;
        for ft in &r.topics {
            let topic = self.topic(ft.topic.0.as_str(), false);
            let mut tr = fetch_response::FetchableTopicResponse::default();
            tr.topic = ft.topic.clone();
            tr.topic_id = ft.topic_id;
            for fp in &ft.partitions {
                let mut pr = fetch_response::PartitionData::default();
                pr.partition_index = fp.partition;
                pr.high_watermark = -1;
                pr.last_stable_offset = -1;
                pr.log_start_offset = -1;
                pr.aborted_transactions = Some(Vec::new());
                pr.preferred_read_replica = BrokerId(-1);
                match topic.as_ref().and_then(|t| t.partition(fp.partition)) {
                    None => {
                        pr.error_code = Code::UnknownTopicOrPartition.value();
                        errors = true;
                    }
                    Some(log) => {
                        let log = log.lock().expect("partition lock");
                        pr.high_watermark = log.high_watermark();
                        pr.last_stable_offset = log.high_watermark();
                        pr.log_start_offset = log.start_offset();
                        let budget = usize::try_from(fp.partition_max_bytes).unwrap_or(usize::MAX).min(max_bytes.saturating_sub(total)).max(1);
                        match log.read(fp.fetch_offset, budget) {
                            Ok(batches) if batches.is_empty() => pr.records = Some(Bytes::new()),
                            Ok(batches) => {
                                let mut records = BytesMut::with_capacity(batches.iter().map(|b| b.len()).sum());
                                for b in &batches {
                                    records.put_slice(b);
                                }
                                total += records.len();
                                pr.records = Some(records.freeze());
                            }
                            Err(code) => {
                                pr.error_code = code.value();
                                errors = true;
                            }
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            out.responses.push(tr);
        }
        (out, total, errors)
    }

    fn list_offsets(&self, r: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut out = ListOffsetsResponse::default();
        for lt in r.topics {
            let topic = self.topic(lt.name.0.as_str(), false);
            let mut tr = list_offsets_response::ListOffsetsTopicResponse::default();
            tr.name = lt.name.clone();
            for lp in lt.partitions {
                let mut pr = list_offsets_response::ListOffsetsPartitionResponse::default();
                pr.partition_index = lp.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                pr.leader_epoch = 0;
                match topic.as_ref().and_then(|t| t.partition(lp.partition_index)) {
                    None => pr.error_code = Code::UnknownTopicOrPartition.value(),
                    Some(log) => {
                        let log = log.lock().expect("partition lock");
                        match lp.timestamp {
                            -1 => pr.offset = log.high_watermark(),
                            -2 => pr.offset = log.start_offset(),
                            ts => (pr.timestamp, pr.offset) = log.offset_for_timestamp(ts),
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            out.topics.push(tr);
        }
        out
    }

    fn offset_for_leader_epoch(&self, r: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
        let mut out = OffsetForLeaderEpochResponse::default();
        for t in r.topics {
            let topic = self.topic(t.topic.0.as_str(), false);
            let mut tr = offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
            tr.topic = t.topic.clone();
            for p in t.partitions {
                let mut pr = offset_for_leader_epoch_response::EpochEndOffset::default();
                pr.partition = p.partition;
                match topic.as_ref().and_then(|t| t.partition(p.partition)) {
                    None => {
                        pr.error_code = Code::UnknownTopicOrPartition.value();
                        pr.leader_epoch = -1;
                        pr.end_offset = -1;
                    }
                    // One leader epoch, 0, for the log's whole life.
                    Some(log) => {
                        pr.leader_epoch = 0;
                        pr.end_offset = log.lock().expect("partition lock").high_watermark();
                    }
                }
                tr.partitions.push(pr);
            }
            out.topics.push(tr);
        }
        out
    }

    fn create_topics(&self, r: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut out = CreateTopicsResponse::default();
        for t in r.topics {
            let partitions = if t.num_partitions < 0 { self.config.default_partitions } else { t.num_partitions };
            let mut tr = create_topics_response::CreatableTopicResult::default();
            tr.name = t.name.clone();
            tr.num_partitions = partitions;
            tr.replication_factor = 1;
            let result = if r.validate_only {
                if self.topic(t.name.0.as_str(), false).is_some() {
                    Err(Code::TopicAlreadyExists)
                } else {
                    Ok(())
                }
            } else {
                self.create_topic(t.name.0.as_str(), partitions)
            };
            match result {
                Ok(()) => tr.topic_id = self.topic(t.name.0.as_str(), false).map_or(uuid::Uuid::nil(), |t| t.id),
                Err(code) => {
                    tr.error_code = code.value();
                    tr.error_message = Some(str_bytes(&format!("{code:?}")));
                }
            }
            out.topics.push(tr);
        }
        out
    }

    fn init_producer_id(&self, r: InitProducerIdRequest) -> InitProducerIdResponse {
        let mut out = InitProducerIdResponse::default();
        if r.producer_id.0 >= 0 {
            // KIP-360: the producer bumps its epoch after a fatal send error.
            out.producer_id = r.producer_id;
            out.producer_epoch = r.producer_epoch.saturating_add(1);
        } else {
            let mut next = self.next_producer_id.lock().expect("producer ids");
            out.producer_id = ProducerId(*next);
            *next += 1;
            out.producer_epoch = 0;
        }
        out
    }

    fn find_coordinator(&self, r: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
        let mut out = FindCoordinatorResponse::default();
        let host = str_bytes(&self.addr.ip().to_string());
        let port = i32::from(self.addr.port());
        if version >= 4 {
            for key in r.coordinator_keys {
                let mut c = find_coordinator_response::Coordinator::default();
                c.key = key;
                c.node_id = BrokerId(NODE_ID);
                c.host = host.clone();
                c.port = port;
                out.coordinators.push(c);
            }
        } else {
            out.node_id = BrokerId(NODE_ID);
            out.host = host;
            out.port = port;
        }
        out
    }

    async fn join_group(&self, r: JoinGroupRequest, version: i16, client_id: String) -> JoinGroupResponse {
        let session = Duration::from_millis(u64::try_from(r.session_timeout_ms).unwrap_or(10_000));
        let rebalance = if version >= 1 { Duration::from_millis(u64::try_from(r.rebalance_timeout_ms).unwrap_or(60_000)) } else { session };
        let joined = self.groups.join(JoinRequest {
            group: r.group_id.0.as_str().to_string(),
            member_id: r.member_id.as_str().to_string(),
            instance_id: r.group_instance_id.as_ref().map(|s| s.as_str().to_string()),
            client_id,
            session_timeout: session,
            rebalance_timeout: rebalance,
            protocol_type: r.protocol_type.as_str().to_string(),
            protocols: r.protocols.iter().map(|p| (p.name.as_str().to_string(), p.metadata.clone())).collect(),
            require_known_member_id: version >= 4,
        });
        let mut out = JoinGroupResponse::default();
        let Ok(joined) = joined.await else {
            out.error_code = Code::RebalanceInProgress.value();
            return out;
        };
        out.error_code = joined.error.value();
        out.generation_id = joined.generation;
        out.protocol_type = joined.protocol_type.as_deref().map(str_bytes);
        out.protocol_name = Some(joined.protocol.as_deref().map_or_else(StrBytes::new, str_bytes));
        out.leader = str_bytes(&joined.leader);
        out.member_id = str_bytes(&joined.member_id);
        out.members = joined
            .members
            .into_iter()
            .map(|(id, instance, metadata)| {
                let mut m = join_group_response::JoinGroupResponseMember::default();
                m.member_id = str_bytes(&id);
                m.group_instance_id = instance.as_deref().map(str_bytes);
                m.metadata = metadata;
                m
            })
            .collect();
        out
    }

    async fn sync_group(&self, r: SyncGroupRequest) -> SyncGroupResponse {
        let assignments = r.assignments.into_iter().map(|a| (a.member_id.as_str().to_string(), a.assignment)).collect();
        let synced = self.groups.sync(r.group_id.0.as_str(), r.member_id.as_str(), r.generation_id, assignments);
        let mut out = SyncGroupResponse::default();
        match synced.await {
            Ok(s) => {
                out.error_code = s.error.value();
                out.assignment = s.assignment;
                out.protocol_type = s.protocol_type.as_deref().map(str_bytes);
                out.protocol_name = s.protocol.as_deref().map(str_bytes);
            }
            Err(_) => out.error_code = Code::RebalanceInProgress.value(),
        }
        out
    }

    fn leave_group(&self, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let mut out = LeaveGroupResponse::default();
        if version >= 3 {
            let ids: Vec<String> = r.members.iter().map(|m| m.member_id.as_str().to_string()).collect();
            let codes = self.groups.leave(r.group_id.0.as_str(), &ids);
            for (m, code) in r.members.into_iter().zip(codes) {
                let mut mr = leave_group_response::MemberResponse::default();
                mr.member_id = m.member_id;
                mr.group_instance_id = m.group_instance_id;
                mr.error_code = code.value();
                out.members.push(mr);
            }
        } else {
            out.error_code = self.groups.leave(r.group_id.0.as_str(), &[r.member_id.as_str().to_string()])[0].value();
        }
        out
    }

    fn offset_commit(&self, r: OffsetCommitRequest) -> OffsetCommitResponse {
        let offsets = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    (t.name.0.as_str().to_string(), p.partition_index, p.committed_offset, p.committed_metadata.as_ref().map(|m| m.as_str().to_string()))
                })
            })
            .collect();
        let code = self.groups.commit(r.group_id.0.as_str(), r.member_id.as_str(), r.generation_id_or_member_epoch, offsets);
        let mut out = OffsetCommitResponse::default();
        for t in r.topics {
            let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
            tr.name = t.name;
            for p in t.partitions {
                let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code = code.value();
                tr.partitions.push(pr);
            }
            out.topics.push(tr);
        }
        out
    }

    fn offset_fetch(&self, r: OffsetFetchRequest) -> OffsetFetchResponse {
        let group = r.group_id.0.as_str();
        let wanted: Vec<(String, i32)> = match r.topics {
            Some(topics) => topics.iter().flat_map(|t| t.partition_indexes.iter().map(|p| (t.name.0.as_str().to_string(), *p))).collect(),
            None => self.groups.committed_partitions(group),
        };
        let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
        for (topic, partition) in wanted {
            match by_topic.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, ps)) => ps.push(partition),
                None => by_topic.push((topic, vec![partition])),
            }
        }
        let mut out = OffsetFetchResponse::default();
        for (topic, partitions) in by_topic {
            let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
            tr.name = name(&topic);
            for p in partitions {
                let (offset, metadata) = self.groups.committed(group, &topic, p);
                let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                pr.committed_offset = offset;
                pr.committed_leader_epoch = -1;
                pr.metadata = Some(metadata.as_deref().map_or_else(StrBytes::new, str_bytes));
                tr.partitions.push(pr);
            }
            out.topics.push(tr);
        }
        out
    }
}
