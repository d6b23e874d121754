//! `serve`: build the provider and the TLS identity (bad values exit 2), then serve until
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tracing::info;

use super::{Failure, ServeArgs};
use crate::provider::{self, ProviderConfig, ProviderKind, VcekSource};
use crate::server::{Identities, ServeOptions, Server};

fn addr(flag: &str, value: &str) -> Result<SocketAddr, Failure> {
    value
        .parse()
        .map_err(|e| Failure::usage(anyhow!("{flag}={value:?}: {e}")))
}

/// The provider configuration the flags describe.
pub(crate) fn provider_config(args: &ServeArgs) -> Result<ProviderConfig, Failure> {
    let kind: ProviderKind = args.provider.parse().map_err(Failure::usage)?;
    let mut config = ProviderConfig::new(kind);
    config.tcti.clone_from(&args.tcti);
    config.sev_guest_device.clone_from(&args.sev_guest_device);
    config.tsm_report_dir.clone_from(&args.tsm_report_dir);
    config.vmpl = args.vmpl;
    config.vcek = args.vcek.parse::<VcekSource>().map_err(Failure::usage)?;
    config.cert_chain.clone_from(&args.cert_chain);
    config.vcek_cache_dir.clone_from(&args.vcek_cache_dir);
    if let Some(path) = &args.simulated_policy {
        if kind != ProviderKind::Simulated {
            return Err(Failure::usage(anyhow!(
                "--simulated-policy is only for --provider simulated"
            )));
        }
        let text = std::fs::read(path)
            .map_err(|e| Failure::usage(anyhow!("--simulated-policy={}: {e}", path.display())))?;
        let hash = crate::policy_hash::policy_hash(&text, crate::policy_hash::PolicyInput::Auto)
            .map_err(Failure::usage)?;
        config.simulated_host_data = Some(hex::encode(hash.sha256));
    }
    Ok(config)
}

pub(super) fn run(args: &ServeArgs) -> Result<ExitCode, Failure> {
    let listen = addr("--listen", &args.listen)?;
    let admin = addr("--admin", &args.admin)?;
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(Failure::usage(anyhow!(
            "--rate={}: must be a positive number of requests per second",
            args.rate
        )));
    }
    if args.burst == 0 {
        return Err(Failure::usage(anyhow!("--burst=0: must be at least 1")));
    }
    let config = provider_config(args)?;
    // The TLS files first: building a simulated provider takes seconds.
    let identity = Identities::from_files(&args.tls_cert, &args.tls_key).map_err(Failure::usage)?;
    let provider: Arc<dyn provider::EvidenceProvider> =
        Arc::from(provider::build(&config).map_err(Failure::usage)?);
    if config.kind == ProviderKind::Simulated {
        tracing::warn!("serving SIMULATED evidence: verifiers refuse it unless --allow-simulated");
    }
    let options = ServeOptions {
        rate_per_second: args.rate,
        rate_burst: args.burst,
        provider_timeout: Duration::from_secs(args.provider_timeout.max(1)),
        ..ServeOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    runtime.block_on(async move {
        let server = Server::start(listen, admin, identity, provider, options)
            .await
            .map_err(Failure::runtime)?;
        // Tests and scripts read the bound addresses from this line (ports may be 0).
        println!(
            "listening on {} (admin {})",
            server.local_addr, server.admin_addr
        );
        shutdown_signal().await;
        info!("shutting down");
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
