//! `nodeplanectl reload`: nodeplaned re-reads and applies its config (root only).

use std::process::ExitCode;

use nodeplane_bus::{self as bus, NodeProxy};
use zbus::Connection;

use super::method_failed;

pub(super) async fn reload(connection: &Connection) -> ExitCode {
    let result = match NodeProxy::new(connection).await {
        Ok(node) => node.reload().await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => {
            println!("reloaded");
            ExitCode::SUCCESS
        }
        Err(zbus::Error::MethodError(name, message, _)) if name.as_str() == bus::ERROR_INVALID_CONFIG => {
            let message = message.unwrap_or_default();
            eprintln!("nodeplanectl: the new config is invalid; nodeplaned keeps the running one:\n  {message}");
            ExitCode::from(2)
        }
        Err(err) => method_failed("reload", err),
    }
}
