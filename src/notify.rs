//! Notifications: a webhook (JSON POST with a Slack-compatible `text` field) and/or a
//! command. They announce failures and recoveries; they never fail the work that sent
//! them, and the webhook URL (which usually embeds a secret) never reaches a log.

use std::time::Duration;

use serde_json::json;

use crate::config::Config;

/// Host part of a URL, safe to log.
fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?']).next())
        .unwrap_or("?")
        .to_string()
}

/// Send `message` everywhere `[notify]` says. Problems are logged, not returned.
pub async fn send(config: &Config, message: &str) {
    if let Some(url) = &config.notify.webhook_url {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build();
        let result = match client {
            Ok(client) => client
                .post(url)
                .json(&json!({"text": message}))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map(|_| ())
                .map_err(|e| e.without_url().to_string()),
            Err(e) => Err(e.without_url().to_string()),
        };
        match result {
            Ok(()) => tracing::info!("notified the webhook at {}", host_of(url)),
            Err(e) => tracing::warn!("notifying the webhook at {} failed: {e}", host_of(url)),
        }
    }
    if let Some(command) = &config.notify.command {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("PGDR_NOTIFY_MESSAGE", message)
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let outcome = match child {
            Ok(mut child) => {
                if let Some(mut stdin) = child.stdin.take() {
                    use tokio::io::AsyncWriteExt;
                    let _ = stdin.write_all(message.as_bytes()).await;
                }
                match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                    Ok(Ok(status)) if status.success() => Ok(()),
                    Ok(Ok(status)) => Err(format!("exited with {status}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timed out after 30 s".to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            tracing::warn!("the notify command failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_only() {
        assert_eq!(
            super::host_of("https://hooks.example.com/services/T0/B0/SECRET"),
            "hooks.example.com"
        );
        assert_eq!(super::host_of("http://127.0.0.1:9000/hook?token=x"), "127.0.0.1:9000");
    }
}
