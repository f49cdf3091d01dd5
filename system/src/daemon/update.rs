//! `Update()` over D-Bus: nodeplaned's unit may write no disk (no devices, a
//! read-only system), so systemd runs `nodeplanectl update BUNDLE --tries N`
//! as a transient unit (`nodeplane-update-<µs>.service`) and nodeplaned waits
//! for its job to end. What it printed is in that unit's journal.

use futures_util::StreamExt;
use zbus::Connection;
use zbus::{OwnedObjectPath, Variant};

const SYSTEMD: &str = "org.freedesktop.systemd1";

/// Runs the update; `Ok` with the unit's name when it succeeded.
pub async fn run(connection: &Connection, bundle: &str, tries: u32) -> Result<String, String> {
    let ask = |err: zbus::Error| format!("asking systemd to run the update: {err}");
    let manager =
        zbus::Proxy::new(connection, SYSTEMD, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
            .await
            .map_err(ask)?;
    // Subscribed before the job starts, so its end is not missed.
    let mut removed = manager.receive_signal("JobRemoved").await.map_err(ask)?;
    manager.call_method("Subscribe", &()).await.map_err(ask)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let unit = format!("nodeplane-update-{stamp}.service");
    let tries = tries.to_string();
    let argv = vec!["nodeplanectl", "update", bundle, "--tries", &tries];
    let exec: Vec<(&str, Vec<&str>, bool)> = vec![("/usr/bin/nodeplanectl", argv, false)];
    let properties: Vec<(&str, Variant<'_>)> = vec![
        ("Description", Variant::from("nodeplane: write an update bundle to the slot not booted")),
        ("Type", Variant::from("oneshot")),
        ("ExecStart", Variant::from(exec)),
    ];
    let aux: Vec<(&str, Vec<(&str, Variant<'_>)>)> = Vec::new();
    let job: OwnedObjectPath =
        manager.call("StartTransientUnit", &(unit.as_str(), "fail", properties, aux)).await.map_err(ask)?;
    tracing::info!("update of {bundle} started as {unit}");
    while let Some(signal) = removed.next().await {
        let Ok((_, path, _, result)) = signal.body().deserialize::<(u32, OwnedObjectPath, String, String)>() else {
            continue;
        };
        if path != job {
            continue;
        }
        return if result == "done" {
            tracing::info!("update of {bundle} done ({unit})");
            Ok(format!("written by {unit}; see: journalctl -u {unit}"))
        } else {
            tracing::error!("update of {bundle} failed ({unit}: {result})");
            Err(format!("{unit} ended {result}; see: journalctl -u {unit}"))
        };
    }
    Err(format!("systemd went away while {unit} ran"))
}
