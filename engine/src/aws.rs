//! What the AWS sources share: how to reach AWS (region, profile, endpoint, keys) and a
//! private tokio runtime per client.

use crate::error::{Error, Result};

/// How to reach an AWS API: the region (else the AWS chain's), an AWS profile, an endpoint of
/// its own (tests; else `AWS_ENDPOINT_URL_<SERVICE>` / `AWS_ENDPOINT_URL` as the SDK reads
/// them), and keys to sign with instead of the chain's.
#[derive(Clone, Debug, Default)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint: Option<String>,
    /// (access key id, secret).
    pub static_credentials: Option<(String, String)>,
}

/// A small multi-threaded runtime for one client's requests.
pub(crate) fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| Error::Other(format!("tokio runtime: {e}")))
}

/// The AWS configuration `cfg` asks for, from the environment and the profile files.
pub(crate) async fn shared_config(cfg: &AwsConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &cfg.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some((id, secret)) = &cfg.static_credentials {
        loader = loader.credentials_provider(aws_sdk_ebs::config::Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "chunkbak-static",
        ));
    }
    loader.load().await
}
