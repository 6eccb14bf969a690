//! The broker's admin API for synchronous tests, on the broker's own client and types
//! (`duomq_broker::admin::client::AdminClient`, `duomq_broker::admin::api`): a test reads
//! a `BrokerStatus`, not hand-picked JSON fields, so a renamed field fails to compile
//! instead of reading as zero. Async tests use `AdminClient` directly.

use duomq_broker::admin::api::BrokerStatus;
pub use duomq_broker::admin::client::{AdminClient, ClientError, Reply};
use std::path::Path;

/// A blocking handle on one broker's admin endpoint.
pub struct Admin {
    client: AdminClient,
}

impl Admin {
    /// The plaintext endpoint on 127.0.0.1:`port`.
    pub fn on_port(port: u16) -> Result<Admin, ClientError> {
        Ok(Admin { client: AdminClient::new(&format!("http://127.0.0.1:{port}"))? })
    }

    /// Any client the broker's builder made (TLS, a password, HTTP Basic).
    pub fn with_client(client: AdminClient) -> Admin {
        Admin { client }
    }

    /// Requests signed with the cluster password in `path`.
    pub fn with_password_file(self, path: &Path) -> Result<Admin, ClientError> {
        Ok(Admin { client: self.client.with_password_file(path)? })
    }

    /// Requests with HTTP Basic credentials of a user with an admin role.
    pub fn with_basic(self, user: &str, password: &str) -> Admin {
        Admin { client: self.client.with_basic(user, password) }
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<BrokerStatus, ClientError> {
        block_on(self.client.status())
    }

    /// `GET /status` as JSON, for fields a test inspects generically.
    pub fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        block_on(self.client.status_json())
    }

    /// Any `GET`.
    pub fn get(&self, path: &str) -> Result<Reply, ClientError> {
        block_on(self.client.get(path))
    }

    pub fn client(&self) -> &AdminClient {
        &self.client
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    match tokio::runtime::Handle::try_current() {
        // Inside a runtime (a tokio test calling a sync helper): off its worker thread.
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(future)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("failed to start a runtime for an admin request: {e}"))
            .block_on(future),
    }
}
