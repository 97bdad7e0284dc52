//! The agent service: the gRPC side of the control plane that node agents talk to.
//! It runs beside the REST API on its own port and shares its Postgres pool; node
//! credentials are checked on every call.

pub mod desired;
mod register;
mod reports;
mod sync;

use anyhow::Context as _;
use std::net::SocketAddr;

use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;
use weft_proto::v1::agent_server::{Agent, AgentServer};
use weft_proto::v1::{
    AckRequest, AckResponse, EndpointReport, FlowBatch, HealthReport, RegisterRequest,
    RegisterResponse, ReportResponse, SyncRequest,
};

use crate::error::ApiError;
use crate::state::AppState;

/// Batches of one `ReportFlows` stream queued but not yet stored before the handler waits
/// for the oldest (and so stops reading the stream).
const FLOW_BATCHES_IN_FLIGHT: usize = 4;

/// An authenticated node.
#[derive(Debug, Clone)]
pub struct NodeCtx {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub cluster_id: Uuid,
    pub name: String,
    /// The capability version the agent announced in its `Sync` request; 0 in other calls,
    /// which announce none.
    pub capability_version: u32,
}

impl NodeCtx {
    /// The node as the store knows it.
    pub fn row(&self) -> crate::store::lookup::NodeRow {
        crate::store::lookup::NodeRow {
            id: self.id,
            tenant_id: self.tenant_id,
            cluster_id: self.cluster_id,
            name: self.name.clone(),
        }
    }
}

pub struct AgentService {
    st: AppState,
}

impl AgentService {
    pub fn new(st: AppState) -> AgentServer<AgentService> {
        AgentServer::new(AgentService { st })
    }

    /// Checks the node credential of a call (`authorization: Bearer <credential>`).
    async fn node<T>(&self, req: &Request<T>) -> Result<NodeCtx, Status> {
        let source = req
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let credential = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing node credential (authorization: Bearer ...)")
            })?;
        let hash = crate::secret::hash_token(credential);
        let row = match self.st.node_credentials.get(&hash) {
            Ok(row) => Some(row),
            Err(epoch) => {
                let row = crate::store::lookup::node(&self.st.pool, &hash)
                    .await
                    .map_err(|e| status(e.into()))?;
                if let Some(r) = &row {
                    self.st
                        .node_credentials
                        .insert(epoch, hash.clone(), r.clone());
                }
                row
            }
        };
        match row {
            Some(n) => Ok(NodeCtx {
                id: n.id,
                tenant_id: n.tenant_id,
                cluster_id: n.cluster_id,
                name: n.name,
                capability_version: 0,
            }),
            // Only failures are limited: a valid node credential always connects.
            None => match self
                .st
                .auth_failures
                .failed(source, &hash, std::time::Instant::now())
            {
                Ok(()) => Err(Status::unauthenticated(
                    "unknown or replaced node credential",
                )),
                Err(_) => Err(Status::resource_exhausted(
                    "too many failed authentication attempts from this address or with this credential",
                )),
            },
        }
    }
}

/// Maps the API's errors onto gRPC statuses; internal details stay in the log.
pub fn status(e: ApiError) -> Status {
    match &e {
        ApiError::Validation { .. } | ApiError::BadRequest(_) | ApiError::BadBody(_) => {
            Status::invalid_argument(e.to_string())
        }
        ApiError::Unauthenticated(_) => Status::unauthenticated(e.to_string()),
        ApiError::Forbidden(_) => Status::permission_denied(e.to_string()),
        ApiError::NotFound(_) => Status::not_found(e.to_string()),
        ApiError::Conflict { .. } => Status::already_exists(e.to_string()),
        ApiError::PreconditionFailed(_) | ApiError::Unprocessable { .. } => {
            Status::failed_precondition(e.to_string())
        }
        ApiError::TooManyRequests { .. } => Status::resource_exhausted(e.to_string()),
        ApiError::Unavailable(_) => Status::unavailable(e.to_string()),
        _ => {
            tracing::error!(error = ?e, "agent call failed");
            Status::internal("internal error; it has been logged")
        }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let source = req
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let hash = crate::secret::hash_token(&req.get_ref().join_token);
        match register::register(&self.st, req.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            // Wrong join tokens are guesses: limited per address and per token, as node
            // credentials are. A valid token always registers.
            Err(ApiError::Unauthenticated(why)) => {
                match self
                    .st
                    .auth_failures
                    .failed(source, &hash, std::time::Instant::now())
                {
                    Ok(()) => Err(Status::unauthenticated(why)),
                    Err(_) => {
                        tracing::info!(%source, "failed registrations, limited");
                        Err(Status::resource_exhausted(
                        "too many failed registrations from this address or with this join token",
                    ))
                    }
                }
            }
            Err(e) => Err(status(e)),
        }
    }

    type SyncStream = sync::Stream;

    async fn sync(&self, req: Request<SyncRequest>) -> Result<Response<Self::SyncStream>, Status> {
        let mut node = self.node(&req).await?;
        node.capability_version = req.get_ref().capability_version;
        let resume_from = req.get_ref().resume_from_revision;
        Ok(Response::new(sync::start(
            self.st.clone(),
            node,
            resume_from,
        )))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let node = self.node(&req).await?;
        let span =
            tracing::info_span!("agent.ack", node = %node.name, revision = req.get_ref().revision);
        if let Some(tp) = req
            .metadata()
            .get(weft_telemetry::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
        {
            weft_telemetry::TraceParent::adopt_str(tp, &span);
        }
        reports::ack(&self.st, &node, req.into_inner())
            .instrument(span)
            .await
            .map(|()| Response::new(AckResponse {}))
            .map_err(status)
    }

    async fn report_health(
        &self,
        req: Request<HealthReport>,
    ) -> Result<Response<ReportResponse>, Status> {
        let node = self.node(&req).await?;
        reports::health(&self.st, &node, req.into_inner())
            .await
            .map(|()| Response::new(ReportResponse {}))
            .map_err(status)
    }

    async fn report_endpoints(
        &self,
        req: Request<EndpointReport>,
    ) -> Result<Response<ReportResponse>, Status> {
        let node = self.node(&req).await?;
        reports::endpoints(&self.st, &node, req.into_inner())
            .await
            .map(|()| Response::new(ReportResponse {}))
            .map_err(status)
    }

    async fn report_probes(
        &self,
        req: Request<weft_proto::v1::ProbeReport>,
    ) -> Result<Response<ReportResponse>, Status> {
        let node = self.node(&req).await?;
        reports::probes(&self.st, &node, req.into_inner())
            .await
            .map(|()| Response::new(ReportResponse {}))
            .map_err(status)
    }

    async fn report_flows(
        &self,
        req: Request<Streaming<FlowBatch>>,
    ) -> Result<Response<ReportResponse>, Status> {
        let node = self.node(&req).await?;
        let mut stream = req.into_inner();
        let (origin, tenant_name) = crate::flows::ingest::origin(&self.st.pool, &node.row())
            .await
            .map_err(status)?;
        let origin = std::sync::Arc::new(origin);
        // Batches are pipelined: the next one is read and enriched while earlier ones wait
        // for the writers. The stream answers OK only once every batch is stored, which
        // is what the agent takes as delivered.
        let mut queued = std::collections::VecDeque::new();
        while let Some(batch) = stream.message().await? {
            queued.push_back(
                reports::flows(&self.st, &node, &origin, &tenant_name, &batch)
                    .await
                    .map_err(status)?,
            );
            if queued.len() > FLOW_BATCHES_IN_FLIGHT {
                if let Some(q) = queued.pop_front() {
                    q.stored(&self.st, &tenant_name).await.map_err(status)?;
                }
            }
        }
        for q in queued {
            q.stored(&self.st, &tenant_name).await.map_err(status)?;
        }
        Ok(Response::new(ReportResponse {}))
    }
}

/// The agent service's TLS configuration (as REST's, [`crate::tls::server_config`]).
pub struct Tls(std::sync::Arc<rustls::ServerConfig>);

impl Tls {
    /// From a PEM certificate chain and key.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<Tls> {
        crate::tls::server_config(cert, key).map(Tls)
    }
}

/// Serves the agent service until `shutdown` resolves; over TLS when `tls` is given.
pub async fn serve(
    st: AppState,
    listen: SocketAddr,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the agent service to {listen}"))?;
    serve_on(st, listener, tls, shutdown).await
}

/// [`serve`] on a bound listener. Over TLS, handshakes are ours ([`crate::tls`]): bounded,
/// each in a task of its own, and an address whose handshakes keep failing is hung up on.
pub async fn serve_on(
    st: AppState,
    listener: tokio::net::TcpListener,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?;
    tracing::info!(%listen, tls = tls.is_some(), "agent service serving");
    let mut server = tonic::transport::Server::builder();
    let router = server.add_service(AgentService::new(st));
    let served = match tls {
        Some(Tls(config)) => {
            let incoming = crate::tls::TlsListener::new(listener, config)?.into_incoming();
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    served.map_err(|e| anyhow::anyhow!("agent service on {listen}: {e}"))
}
