//! `nodeplanectl monitor`: the connection attempts NetworkPolicy drops, as
//! they happen (root only).

use std::process::ExitCode;
use std::time::SystemTime;

use nodeplane_bus::PolicyDrop;
use zbus::Connection;

use super::{UNREACHABLE, method_failed};

pub(super) async fn monitor(connection: &Connection, json: bool) -> ExitCode {
    use zbus::export::futures_core::Stream;
    if !rustix::process::geteuid().is_root() {
        eprintln!("nodeplanectl: monitor is for root only (policy drops name pods and addresses)");
        return ExitCode::FAILURE;
    }
    let mut stream = match zbus::MessageStream::for_match_rule(PolicyDrop::match_rule(), connection, None).await {
        Ok(stream) => stream,
        Err(err) => return method_failed("monitor", err),
    };
    if !json {
        eprintln!("watching NetworkPolicy drops (Ctrl-C ends)");
    }
    while let Some(message) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await {
        let Ok(args) = message.and_then(|m| m.body().deserialize::<PolicyDrop>()) else { continue };
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        // Whose policies dropped it: the client's (egress) or the server's (ingress).
        let direction = args.reason.split('-').next().unwrap_or_default();
        if json {
            let value = serde_json::json!({
                "time": time, "from": args.from, "to": args.to, "port": args.port, "protocol": args.protocol,
                "direction": direction, "reason": args.reason, "service": args.service,
            });
            println!("{value}");
        } else {
            let service =
                if args.service.is_empty() { String::new() } else { format!(" via Service {}", args.service) };
            println!(
                "{} DROP {} {} -> {}{service}: {direction}: {}",
                time.get(11..23).unwrap_or(&time),
                args.protocol,
                args.from,
                args.to,
                args.reason
            );
        }
    }
    eprintln!("nodeplanectl: nodeplaned went away");
    ExitCode::from(UNREACHABLE)
}
