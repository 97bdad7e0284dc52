//! Turning an agent's `FlowBatch` into stored flows: checked, named and labelled from the
//! tenant's desired state with a handful of queries per batch (never one per flow), then
//! written in one statement.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;
use weft_model::flow::{DnsInfo, DropReason, HttpHeader, HttpInfo, L7Info, Protocol, Verdict};
use weft_model::identity;
use weft_model::labels::Labels;
use weft_proto::v1::{Flow, FlowBatch};

use super::{NewFlow, NewPeer, Origin};
use crate::error::Result;
use crate::store::set_tenant;

/// The node a stream comes from, with the names stored beside each flow; looked up once
/// per `ReportFlows` stream, under the node's tenant.
pub async fn origin(
    pool: &PgPool,
    node: &crate::store::lookup::NodeRow,
) -> Result<(Origin, String)> {
    let mut tx = pool.begin().await?;
    set_tenant(&mut tx, node.tenant_id).await?;
    let (cluster_name, tenant_name): (String, String) = sqlx::query_as(
        "SELECT c.name, t.name FROM clusters c JOIN tenants t ON t.id = c.tenant_id \
         WHERE c.id = $1",
    )
    .bind(node.cluster_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        Origin {
            tenant_id: node.tenant_id,
            node_id: node.id,
            node_name: node.name.clone(),
            cluster_id: node.cluster_id,
            cluster_name,
        },
        tenant_name,
    ))
}

#[derive(Debug, Clone)]
struct Endpoint {
    id: Uuid,
    name: String,
    identity: Option<u32>,
}

/// What one batch refers to, from the cache and the database.
#[derive(Default)]
struct Lookup {
    by_id: HashMap<Uuid, Endpoint>,
    by_ip: HashMap<IpAddr, Endpoint>,
    identities: HashMap<u32, Arc<Labels>>,
    services: HashMap<Uuid, String>,
}

/// The keys a batch refers to.
#[derive(Default)]
struct Keys {
    ids: HashSet<Uuid>,
    ips: HashSet<IpAddr>,
    identities: HashSet<u32>,
    services: HashSet<Uuid>,
}

impl Keys {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.ips.is_empty()
            && self.identities.is_empty()
            && self.services.is_empty()
    }
}

/// How long a tenant's cached lookups are trusted without any change being announced.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// Entries per tenant (addresses of the world included) before its cache starts over.
const CACHE_MAX_ENTRIES: usize = 100_000;

/// Endpoints (by id and by address), identities' labels and services' names as ingest
/// last read them, per tenant, absent ones included (most addresses a node sees are the
/// world's). Without it every batch costs three lookups; with it, a steady stream of
/// flows costs none. Every desired-state change of a tenant clears the tenant's entry
/// ([`crate::changes::Changes::spawn_invalidation`]: endpoint reports, services and
/// identities all bump the revision), and entries older than [`CACHE_TTL`] are read again
/// anyway.
#[derive(Default)]
pub struct EnrichCache {
    tenants: Mutex<HashMap<Uuid, TenantCache>>,
    /// Bumped by every invalidation: a lookup that raced one is used once, not kept.
    epoch: AtomicU64,
}

struct TenantCache {
    born: Instant,
    by_id: HashMap<Uuid, Option<Endpoint>>,
    by_ip: HashMap<IpAddr, Option<Endpoint>>,
    identities: HashMap<u32, Option<Arc<Labels>>>,
    services: HashMap<Uuid, Option<String>>,
}

impl TenantCache {
    fn new() -> Self {
        TenantCache {
            born: Instant::now(),
            by_id: HashMap::new(),
            by_ip: HashMap::new(),
            identities: HashMap::new(),
            services: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.by_id.len() + self.by_ip.len() + self.identities.len() + self.services.len()
    }

    /// Copies what is cached into `out` and returns what is not.
    fn fill(&self, want: Keys, out: &mut Lookup) -> Keys {
        let ids = cached(&self.by_id, want.ids, &mut out.by_id);
        let ips = cached(&self.by_ip, want.ips, &mut out.by_ip);
        // The identities of the endpoints found are needed too.
        let mut identities = want.identities;
        identities.extend(
            out.by_id
                .values()
                .chain(out.by_ip.values())
                .filter_map(|ep| ep.identity.filter(|&n| identity::is_allocated(n))),
        );
        Keys {
            ids,
            ips,
            identities: cached(&self.identities, identities, &mut out.identities),
            services: cached(&self.services, want.services, &mut out.services),
        }
    }

    /// Remembers what the database answered for `asked`, absences included.
    fn record(&mut self, asked: &Keys, found: &Lookup) {
        remember(&mut self.by_id, &asked.ids, &found.by_id);
        remember(&mut self.by_ip, &asked.ips, &found.by_ip);
        remember(&mut self.identities, &asked.identities, &found.identities);
        remember(&mut self.services, &asked.services, &found.services);
    }
}

/// Copies `cache`'s answers for `want` into `out` (a cached absence adds nothing) and
/// returns the keys it has no answer for.
fn cached<K: Hash + Eq + Copy, V: Clone>(
    cache: &HashMap<K, Option<V>>,
    want: HashSet<K>,
    out: &mut HashMap<K, V>,
) -> HashSet<K> {
    let mut missing = HashSet::new();
    for k in want {
        match cache.get(&k) {
            Some(Some(v)) => {
                out.insert(k, v.clone());
            }
            Some(None) => {}
            None => {
                missing.insert(k);
            }
        }
    }
    missing
}

/// Remembers what was found (found identities may go beyond those asked for: an
/// endpoint's identity comes with it) and that the rest of `asked` does not exist.
fn remember<K: Hash + Eq + Copy, V: Clone>(
    cache: &mut HashMap<K, Option<V>>,
    asked: &HashSet<K>,
    found: &HashMap<K, V>,
) {
    for (k, v) in found {
        cache.insert(*k, Some(v.clone()));
    }
    for k in asked {
        cache.entry(*k).or_insert(None);
    }
}

impl EnrichCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, TenantCache>> {
        // A panic while holding it leaves plain maps behind: still usable.
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets one tenant's lookups (`None`: every tenant's).
    pub fn invalidate(&self, tenant: Option<Uuid>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut map = self.lock();
        match tenant {
            Some(t) => {
                map.remove(&t);
            }
            None => map.clear(),
        }
    }
}

/// A flow as received, its fields parsed.
struct Parsed<'a> {
    raw: &'a Flow,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    src_port: u16,
    dst_port: u16,
    src_ep: Option<Uuid>,
    dst_ep: Option<Uuid>,
    service: Option<Uuid>,
}

fn parse(f: &Flow) -> Option<Parsed<'_>> {
    let id = |s: &str| {
        if s.is_empty() {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    Some(Parsed {
        raw: f,
        src_ip: f.src_ip.parse().ok()?,
        dst_ip: f.dst_ip.parse().ok()?,
        src_port: u16::try_from(f.src_port).ok()?,
        dst_port: u16::try_from(f.dst_port).ok()?,
        src_ep: id(&f.src_endpoint)?,
        dst_ep: id(&f.dst_endpoint)?,
        service: id(&f.service)?,
    })
}

/// Labels shown for a reserved identity (Cilium's `reserved:` source).
fn reserved_labels(n: u32) -> Arc<Labels> {
    let name = match n {
        identity::HOST => "host",
        identity::WORLD => "world",
        identity::UNMANAGED => "unmanaged",
        identity::HEALTH => "health",
        identity::INIT => "init",
        identity::REMOTE_NODE => "remote-node",
        identity::KUBE_APISERVER => "kube-apiserver",
        identity::INGRESS => "ingress",
        // An address a node learned from DNS (`toFQDNs`): outside the cluster.
        n if identity::is_fqdn(n) => "world",
        _ => return Arc::default(),
    };
    Arc::new([(format!("reserved:{name}"), String::new())].into())
}

/// The enriched flows of a batch, and how many records were unusable (bad addresses or
/// ids: counted with the lost events, never silently dropped).
pub struct Enriched {
    pub flows: Vec<NewFlow>,
    pub invalid: u64,
}

/// Parses and enriches a batch within the node's tenant. Agent clocks are trusted within
/// a day back and an hour ahead; outside that (no partition may exist) the receive time
/// is used.
pub async fn enrich(
    pool: &PgPool,
    cache: &EnrichCache,
    tenant: Uuid,
    batch: &FlowBatch,
) -> Result<Enriched> {
    let parsed: Vec<Parsed<'_>> = batch.flows.iter().filter_map(parse).collect();
    let invalid = (batch.flows.len() - parsed.len()) as u64;
    let lookup = look_up_cached(pool, cache, tenant, &parsed).await?;
    let now = Utc::now();
    let flows = parsed
        .iter()
        .map(|p| {
            let f = p.raw;
            let time = DateTime::from_timestamp_nanos(f.time_unix_nanos);
            let time = if time < now - Duration::hours(24) || time > now + Duration::hours(1) {
                now
            } else {
                time
            };
            let verdict = Verdict::from_agent(&f.verdict);
            let drop_reason = if verdict == Verdict::Dropped {
                Some(DropReason::from_agent(&f.drop_reason).unwrap_or(DropReason::Unknown))
            } else {
                None
            };
            NewFlow {
                time,
                src: peer(&lookup, p.src_ip, p.src_port, p.src_ep, f.src_identity),
                dst: peer(&lookup, p.dst_ip, p.dst_port, p.dst_ep, f.dst_identity),
                service_id: p.service.filter(|s| lookup.services.contains_key(s)),
                service_name: p.service.and_then(|s| lookup.services.get(&s).cloned()),
                protocol: Protocol::from_number(f.proto).number(),
                verdict,
                drop_reason,
                direction: f.direction.to_ascii_lowercase(),
                observation_point: f.observation_point.clone(),
                tcp_flags: (f.tcp_flags & 0x3f) as u8,
                bytes: i64::try_from(f.bytes).unwrap_or(i64::MAX),
                packets: i64::try_from(f.packets).unwrap_or(i64::MAX),
                count: i64::from(f.count.max(1)),
                l7: l7_of(f),
            }
        })
        .collect();
    Ok(Enriched { flows, invalid })
}

/// The L7 part of a record: its HTTP request or DNS query.
fn l7_of(f: &Flow) -> Option<L7Info> {
    let http = f.http.as_ref().map(|h| HttpInfo {
        method: h.method.clone(),
        url: h.url.clone(),
        protocol: h.protocol.clone(),
        code: u16::try_from(h.code).unwrap_or(0),
        latency_ms: h.latency_us as f64 / 1000.0,
        headers: h
            .headers
            .iter()
            // An agent's text: stored as lines of `key: value` (see the block codec).
            .map(|x| HttpHeader {
                key: x
                    .key
                    .chars()
                    .map(|c| if c.is_control() || c == ':' { '_' } else { c })
                    .collect(),
                value: x
                    .value
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect(),
            })
            .collect(),
    });
    let dns = f.dns.as_ref().map(|d| DnsInfo {
        query: d.query.clone(),
        qtypes: d.qtypes.clone(),
        rcode: u16::try_from(d.rcode).unwrap_or(u16::MAX),
        ips: d.ips.clone(),
        ttl: d.ttl,
    });
    (http.is_some() || dns.is_some()).then_some(L7Info { http, dns })
}

fn peer(l: &Lookup, ip: IpAddr, port: u16, ep: Option<Uuid>, identity: u32) -> NewPeer {
    // An endpoint id of another tenant, or a stale one, is simply unknown here (RLS).
    let endpoint = ep
        .and_then(|id| l.by_id.get(&id))
        .or_else(|| l.by_ip.get(&ip));
    let identity = match (identity, endpoint.and_then(|e| e.identity)) {
        (0, Some(known)) => known,
        (n, _) => n,
    };
    let labels = if identity::is_allocated(identity) {
        l.identities.get(&identity).cloned().unwrap_or_default()
    } else {
        reserved_labels(identity)
    };
    NewPeer {
        ip,
        port,
        endpoint_id: endpoint.map(|e| e.id),
        endpoint_name: endpoint.map(|e| e.name.clone()),
        identity,
        labels,
    }
}

type EndpointRow = (Uuid, String, Option<String>, Option<String>, Option<i64>);

/// The batch's lookups: from the tenant's cache, the rest from the database (and then
/// cached, unless an invalidation raced the read).
async fn look_up_cached(
    pool: &PgPool,
    cache: &EnrichCache,
    tenant: Uuid,
    flows: &[Parsed<'_>],
) -> Result<Lookup> {
    let mut keys = Keys::default();
    for p in flows {
        keys.ids.extend(p.src_ep);
        keys.ids.extend(p.dst_ep);
        keys.ips.insert(p.src_ip);
        keys.ips.insert(p.dst_ip);
        keys.services.extend(p.service);
        for n in [p.raw.src_identity, p.raw.dst_identity] {
            if identity::is_allocated(n) {
                keys.identities.insert(n);
            }
        }
    }
    let mut out = Lookup::default();
    let (epoch, missing) = {
        let epoch = cache.epoch.load(Ordering::SeqCst);
        let mut map = cache.lock();
        let tc = map.entry(tenant).or_insert_with(TenantCache::new);
        if tc.born.elapsed() > CACHE_TTL || tc.len() > CACHE_MAX_ENTRIES {
            *tc = TenantCache::new();
        }
        (epoch, tc.fill(keys, &mut out))
    };
    if missing.is_empty() {
        return Ok(out);
    }
    let found = look_up(pool, tenant, &missing).await?;
    {
        let mut map = cache.lock();
        if cache.epoch.load(Ordering::SeqCst) == epoch {
            map.entry(tenant)
                .or_insert_with(TenantCache::new)
                .record(&missing, &found);
        }
    }
    out.by_id.extend(found.by_id);
    out.by_ip.extend(found.by_ip);
    out.identities.extend(found.identities);
    out.services.extend(found.services);
    Ok(out)
}

async fn look_up(pool: &PgPool, tenant: Uuid, keys: &Keys) -> Result<Lookup> {
    let mut identities: HashSet<i64> = keys.identities.iter().map(|&n| i64::from(n)).collect();
    let mut out = Lookup::default();
    let mut tx = pool.begin().await?;
    set_tenant(&mut tx, tenant).await?;
    let ids: Vec<Uuid> = keys.ids.iter().copied().collect();
    let ips: Vec<String> = keys.ips.iter().map(IpAddr::to_string).collect();
    let rows: Vec<EndpointRow> = if ids.is_empty() && ips.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, name, host(ipv4), host(ipv6), identity FROM endpoints \
             WHERE tenant_id = $1 AND (id = ANY($2) OR ipv4 = ANY($3::inet[]) OR ipv6 = ANY($3::inet[]))",
        )
        .bind(tenant)
        .bind(&ids)
        .bind(&ips)
        .fetch_all(&mut *tx)
        .await?
    };
    for (id, name, v4, v6, ident) in rows {
        let ep = Endpoint {
            id,
            name,
            identity: ident.and_then(|n| u32::try_from(n).ok()),
        };
        if let Some(n) = ep.identity.filter(|&n| identity::is_allocated(n)) {
            identities.insert(i64::from(n));
        }
        for ip in [v4, v6].into_iter().flatten() {
            if let Ok(ip) = ip.parse() {
                out.by_ip.insert(ip, ep.clone());
            }
        }
        out.by_id.insert(id, ep);
    }
    let identities: Vec<i64> = identities.into_iter().collect();
    if !identities.is_empty() {
        let rows: Vec<(i64, Json<Labels>)> = sqlx::query_as(
            "SELECT number, labels FROM identities WHERE tenant_id = $1 AND number = ANY($2)",
        )
        .bind(tenant)
        .bind(&identities)
        .fetch_all(&mut *tx)
        .await?;
        for (n, labels) in rows {
            if let Ok(n) = u32::try_from(n) {
                out.identities.insert(n, Arc::new(labels.0));
            }
        }
    }
    let services: Vec<Uuid> = keys.services.iter().copied().collect();
    if !services.is_empty() {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM services WHERE tenant_id = $1 AND id = ANY($2)")
                .bind(tenant)
                .bind(&services)
                .fetch_all(&mut *tx)
                .await?;
        out.services.extend(rows);
    }
    tx.commit().await?;
    Ok(out)
}
