//! The command-line flags of the client's TLS options, shared by every command that
//! connects with this client (`duomq-broker send`/`receive`, `duomq-bench`): flatten
//! [`TlsArgs`] into a clap command and turn it into [`TlsOptions`].

use super::options::TlsOptions;
use std::path::PathBuf;

/// How to reach `stomp+ssl://` brokers; ignored for `stomp://` ones.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// For stomp+ssl:// URLs: PEM file with the CA certificate that signed the broker's
    /// certificate (on Kubernetes, ca.crt of the group's TLS Secret). The broker must
    /// present a certificate from this CA for the host name in the URL.
    #[arg(long, env = "DUOMQ_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present, for brokers with tls.stomp.clientAuth; its
    /// common name can log you in as a user (auth.certificateUsers). Needs --key-file.
    #[arg(long, env = "DUOMQ_CERT_FILE", value_name = "PEM", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "DUOMQ_KEY_FILE", value_name = "PEM", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Check the broker's certificate against this name instead of the URL's host, like
    /// `openssl s_client -servername`: for an IP address or a port-forward
    /// (stomp+ssl://127.0.0.1:61614 with --tls-server-name broker.example.svc).
    #[arg(long, env = "DUOMQ_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl From<&TlsArgs> for TlsOptions {
    fn from(args: &TlsArgs) -> TlsOptions {
        TlsOptions {
            ca_file: args.ca_file.clone(),
            cert_file: args.cert_file.clone(),
            key_file: args.key_file.clone(),
            server_name: args.tls_server_name.clone(),
        }
    }
}
